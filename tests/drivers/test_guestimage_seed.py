"""The cloud-init NoCloud seed (rendered data and the ISO carrying it) and the isolinux boot CD."""

import io
import shutil
import subprocess

import pycdlib
import pytest
import yaml

from dockyard.drivers.guestimage import build, iso, seed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb6 dockyard-m1"


def render(**kw):
    args = dict(
        machine="m1",
        instance="iid-dockyard-m1-0001",
        ssh_public_key=KEY + "\n",
        nics=[seed.nic("eth0", "52:54:00:AA:bb:cc")],
    )
    args.update(kw)
    return seed.render(**args)


def test_user_data_is_valid_cloud_config():
    files = render()
    assert set(files) == {"user-data", "meta-data", "network-config"}
    text = files["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["hostname"] == "m1" and data["ssh_pwauth"] is False and data["ssh_deletekeys"] is False
    (user,) = data["users"]
    assert user["name"] == "docker" and user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL" and user["lock_passwd"] is True
    # the guest units (tests/drivers/test_guestimage_units.py): / grows after `dockyard set --disk`, clock sync
    enable = ["systemctl", "enable", "--no-reload", "dockyard-growroot.service", "dockyard-clocksync.timer"]
    start = ["systemctl", "start", "--no-block", "dockyard-clocksync.timer"]
    assert data["runcmd"] == [enable, start, ["touch", "/etc/cloud/cloud-init.disabled"]]
    assert "mounts" not in data
    # cloud-init's config and final stages yield the guest's CPUs to provisioning (nothing it needs is in them)
    (background,) = data["bootcmd"]
    assert "cloud-config.service cloud-final.service" in background[2]
    assert "systemctl set-property --runtime $u CPUWeight=1 CPUQuota=20%" in background[2]


def test_meta_data_and_network_config():
    files = render(
        nics=[seed.nic("nat", "52:54:00:AA:bb:cc"), seed.nic("hostonly", "52:54:00:00:00:02", False)],
        mounts=[["hosthome", "/home/alice", "vboxsf", "defaults,nofail", "0", "0"]],
        run_once=False,
        user="core",
    )
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "iid-dockyard-m1-0001", "local-hostname": "m1"}
    net = yaml.safe_load(files["network-config"])
    assert net["version"] == 2
    assert net["ethernets"]["nat"] == {"match": {"macaddress": "52:54:00:aa:bb:cc"}, "dhcp4": True}
    assert net["ethernets"]["hostonly"]["dhcp4-overrides"] == {"use-routes": False, "use-dns": False}
    user = yaml.safe_load(files["user-data"])
    assert user["mounts"] == [["hosthome", "/home/alice", "vboxsf", "defaults,nofail", "0", "0"]]
    assert user["users"][0]["name"] == "core"
    assert len(user["runcmd"]) == 2 and user["runcmd"][0][:2] == ["systemctl", "enable"]  # cloud-init stays on


def test_hostile_strings_stay_inside_their_yaml_values():
    files = render(machine="m1", ssh_public_key='ssh-ed25519 AAAA x"\n  - injected: true #')
    data = yaml.safe_load(files["user-data"])
    assert data["users"][0]["ssh_authorized_keys"] == ['ssh-ed25519 AAAA x"\n  - injected: true #']
    assert "injected" not in data


def test_instance_ids_differ():
    assert seed.instance_id("m1") != seed.instance_id("m1")


def test_seed_iso_round_trip(tmp_path):
    files = render()
    path = tmp_path / "seed.iso"
    seed.write_seed(str(path), files)
    label, read = iso.read_iso(str(path))
    assert label == "cidata" and read == files
    if shutil.which("isoinfo"):  # an independent reader sees the Rock Ridge names and the label
        listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(path)], capture_output=True, text=True).stdout
        assert sorted(listing.split()) == ["/meta-data", "/network-config", "/user-data"]
        info = subprocess.run(["isoinfo", "-d", "-i", str(path)], capture_output=True, text=True).stdout
        assert "Volume id: cidata" in info and "Rock Ridge" in info and "Joliet" in info
    if shutil.which("blkid"):  # what cloud-init uses to find the seed
        out = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(path)], capture_output=True, text=True)
        assert out.stdout.strip() == "cidata"


def test_iso_names_are_unique_8_3():
    taken = set()
    names = [iso._iso_name(n, taken) for n in ("user-data", "user-data2", "meta-data", "vmlinuz", "ldlinux.c32")]
    assert names[0] == "/USER_DAT.;1" and names[1] == "/USER_DA1.;1"
    assert "/LDLINUX.C32;1" in names and len(set(names)) == len(names)


def test_boot_iso_is_el_torito_with_isolinux(tmp_path):
    iso_dir = tmp_path / "isolinux"
    iso_dir.mkdir()
    (iso_dir / "isolinux.bin").write_bytes(b"\xfa" * 4096)
    (iso_dir / "ldlinux.c32").write_bytes(b"ldlinux")
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd").write_bytes(b"initrd")
    image = build.GuestImage(
        disk="", kernel=str(tmp_path / "vmlinuz"), initrd=str(tmp_path / "initrd"), isolinux=str(iso_dir)
    )
    path = tmp_path / "boot.iso"
    seed.write_boot_iso(str(path), image, "root=LABEL=dockyard-root rw console=ttyS0")
    label, files = iso.read_iso(str(path))
    assert files["vmlinuz"] == b"kernel" and files["initrd"] == b"initrd"
    cfg = files["isolinux.cfg"].decode()
    assert "KERNEL /vmlinuz" in cfg and "APPEND initrd=/initrd root=LABEL=dockyard-root rw console=ttyS0" in cfg
    p = pycdlib.PyCdlib()
    p.open(str(path))
    try:
        assert p.eltorito_boot_catalog is not None
        out = io.BytesIO()
        p.get_file_from_iso_fp(out, iso_path="/ISOLINUX.BIN;1")
        # The boot info table (written at offset 8 by El Torito authoring) replaced bytes 8..63 of the loader.
        assert out.getvalue()[:8] == b"\xfa" * 8 and out.getvalue()[8:64] != b"\xfa" * 56
    finally:
        p.close()


@pytest.mark.parametrize("bad", ["", "x"])
def test_read_iso_rejects_non_iso(tmp_path, bad):
    path = tmp_path / "not.iso"
    path.write_bytes(bad.encode() * 40000)
    with pytest.raises(pycdlib.pycdlibexception.PyCdlibException):
        iso.read_iso(str(path))


def test_first_boot_files_travel_on_the_iso_and_install_once_per_instance(tmp_path):
    files = [("/usr/local/lib/dockyard/engine.pyz", b"\x00zip", 0o755), ("/etc/dockyard/it's key.pem", b"k", 0o600)]
    rendered = render(first_boot=(files, "systemctl start --no-block x.service"))
    bootcmd = yaml.safe_load(rendered["user-data"])["bootcmd"]
    entry = bootcmd[-1]
    assert entry[:3] == ["cloud-init-per", "instance", "dockyard-first-boot"] and entry[3:5] == ["sh", "-c"]
    script = entry[5]
    assert "mount -o ro LABEL=cidata" in script and script.endswith("{ systemctl start --no-block x.service; }")
    assert '-m 0755 "$d/dockyard-file0" /usr/local/lib/dockyard/engine.pyz' in script
    assert "-m 0600 \"$d/dockyard-file1\" '/etc/dockyard/it'\"'\"'s key.pem'" in script
    subprocess.run(["sh", "-n", "-c", script], check=True)
    seed.write_seed(tmp_path / "seed.iso", rendered)
    label, on_iso = iso.read_iso(tmp_path / "seed.iso")
    assert label == "cidata" and on_iso["dockyard-file0"] == b"\x00zip" and on_iso["dockyard-file1"] == b"k"
    # without first-boot files the seed is as before
    assert "cloud-init-per" not in render()["user-data"].decode() and "dockyard-file0" not in render()
