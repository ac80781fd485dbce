"""Laptop folders in a qemu machine: --share PATH[:ro] / --no-share / the home directory by default, guarded
against covering the guest's own system or its SSH user's home; QEMU gets -virtfs (and accepts it), the seed
mounts them at the same paths before SSH comes up and lists them in fstab for later boots."""

import os
import shutil
import subprocess

import pytest
import yaml

from dockyard.drivers.guestimage import seed
from dockyard.drivers.qemu import cmdline, shares
from dockyard.drivers.qemu.driver import QemuDriver
from dockyard.provisioner.core.errors import DriverError


def test_parse_and_guards(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b c"
    a.mkdir()
    b.mkdir()
    got = shares.parse([str(a), f"{b}:ro"], "docker")
    assert got == [
        {"Path": str(a), "Tag": "share0", "ReadOnly": False},
        {"Path": str(b), "Tag": "share1", "ReadOnly": True},
    ]
    for bad, why in (
        ("relative", "absolute"),
        (str(tmp_path / "missing"), "no such directory"),
        ("/", "machine's own"),
        ("/tmp", "machine's own"),
        ("/etc", "cover"),
        ("/usr/share", "cover"),
        ("/home", "cover the machine's own /home/docker"),
    ):
        with pytest.raises(DriverError, match=why):
            shares.parse([bad], "docker")
    with pytest.raises(DriverError, match="overlaps"):
        shares.parse([str(tmp_path), str(a)], "docker")


def test_home_is_the_default_share_unless_it_cannot_be(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert shares.default("docker") == ([{"Path": str(tmp_path), "Tag": "share0", "ReadOnly": False}], "")
    monkeypatch.setenv("HOME", "/home/docker")  # the guest user's own home: never shared, said once
    got, why = shares.default("docker")
    assert got == [] and "not shared" in why


def flags(**over):
    opts = {f.key: () if f.multiple else (bool(f.default) if f.is_flag else f.default) for f in QemuDriver.flags}
    opts.update(over)
    return opts


def test_flags_record_shares_only_when_given(tmp_path):
    d = QemuDriver("m", str(tmp_path))
    d.set_config_from_flags(flags())
    assert "Shares" not in d.config  # decided at create time: the home directory
    d.set_config_from_flags(flags(no_share=True))
    assert d.config["Shares"] == []
    d.set_config_from_flags(flags(share=(f"{tmp_path}:ro",)))
    assert d.config["Shares"] == [{"Path": str(tmp_path), "Tag": "share0", "ReadOnly": True}]
    with pytest.raises(DriverError, match="contradict"):
        d.set_config_from_flags(flags(share=(str(tmp_path),), no_share=True))


def spec(tmp_path, share_list):
    return cmdline.VMSpec(
        name="m",
        binary=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        accel="tcg",
        cpus=1,
        memory_mb=64,
        disk=str(tmp_path / "none.qcow2"),
        ssh_port=1,
        mac="52:54:00:00:00:01",
        shares=share_list,
    )


def test_virtfs_on_the_command_line_and_accepted_by_qemu(tmp_path):
    d = tmp_path / "with,comma"
    d.mkdir()
    share_list = [{"Path": str(d), "Tag": "share0", "ReadOnly": True}]
    argv = cmdline.build(spec(tmp_path, share_list))
    i = argv.index("-virtfs")
    assert argv[i + 1] == (
        f"local,path={str(d).replace(',', ',,')},mount_tag=share0,security_model=mapped-xattr,id=share0,readonly=on"
    )
    binary = shutil.which("qemu-system-x86_64")
    if not binary:
        pytest.skip("needs qemu-system-x86 (.ci/vm-deps.sh)")
    # QEMU parses the option and sets the device up (firmware only, stopped at once with -S and a timeout).
    p = subprocess.run(
        [binary, "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-S", "-monitor", "none"]
        + ["-virtfs", argv[i + 1], "-daemonize", "-pidfile", str(tmp_path / "pid")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "pid") as f:
        os.kill(int(f.read()), 9)


def test_seed_mounts_shares_early_and_in_fstab():
    files = seed.render(
        "m",
        "iid",
        "ssh-ed25519 AAAA k",
        [seed.nic("eth0", "52:54:00:00:00:01")],
        shares=[{"Path": "/home/al ice", "Tag": "share0", "ReadOnly": False}],
    )
    data = yaml.safe_load(files["user-data"])
    assert data["bootcmd"][1:] == [  # after the one that puts cloud-init's later stages in the background
        [
            "sh",
            "-c",
            "mkdir -p '/home/al ice' && (mountpoint -q '/home/al ice' || "
            "mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share0 '/home/al ice')",
        ]
    ]
    fstab = [f for f in data["write_files"] if f["path"] == "/etc/fstab"]
    assert fstab == [
        {
            "path": "/etc/fstab",
            "append": True,
            "content": "share0 /home/al\\040ice 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0\n",
        }
    ]
    plain = yaml.safe_load(seed.render("m", "iid", "k", [])["user-data"])
    # Without shares: no mounts and no fstab lines (the growroot script is written for every machine).
    assert plain["bootcmd"] == seed.background_later_stages()
    assert all(f["path"] != "/etc/fstab" for f in plain.get("write_files", []))
