"""--cpus, --memory and --disk mean the same (GiB) for qemu and virtualbox, override the drivers' own MB
flags, and both drivers default to half the host's CPUs (at most 4), 2 GiB and 20 GiB."""

import json
import shutil
import subprocess

import pytest

from dockyard.drivers.guestimage import resources, seed
from dockyard.drivers.qemu.driver import QemuDriver
from dockyard.drivers.virtualbox.driver import VirtualBoxDriver
from dockyard.provisioner.core.errors import DriverError

needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")
KEYS = {QemuDriver: ("CPUs", "Memory", "DiskSize"), VirtualBoxDriver: ("CPU", "Memory", "DiskSize")}


def configure(cls, tmp_path, **over):
    opts = {f.key: () if f.multiple else (bool(f.default) if f.is_flag else f.default) for f in cls.flags}
    opts.update(over)
    d = cls("m", str(tmp_path))
    d.set_config_from_flags(opts)
    return tuple(d.config[k] for k in KEYS[cls])


@pytest.mark.parametrize("cls", [QemuDriver, VirtualBoxDriver])
def test_same_defaults_and_units(cls, tmp_path):
    assert configure(cls, tmp_path) == (resources.default_cpus(), 2048, 20480)
    assert configure(cls, tmp_path, cpus=3, memory=1.5, disk=30) == (3, 1536, 30720)
    for bad in ({"cpus": 0}, {"memory": 0.1}, {"disk": 0}):
        with pytest.raises(DriverError):
            configure(cls, tmp_path, **bad)


def test_default_cpus_is_half_the_host_up_to_4(monkeypatch):
    for host, want in ((1, 1), (2, 1), (6, 3), (16, 4)):
        monkeypatch.setattr(resources.os, "cpu_count", lambda host=host: host)
        assert resources.default_cpus() == want


def qemu_with_disk(tmp_path, gib=2, **over):
    opts = {f.key: () if f.multiple else (bool(f.default) if f.is_flag else f.default) for f in QemuDriver.flags}
    opts.update(disk=gib, **over)
    d = QemuDriver("m", str(tmp_path))
    d.set_config_from_flags(opts)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", d.path("disk.qcow2"), f"{gib}G"], check=True)
    return d


def virtual_size(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["virtual-size"]


@needs_qemu_img
def test_resize_grows_the_qcow2_and_keeps_a_bridge(tmp_path):
    d = qemu_with_disk(tmp_path, qemu_network="bridge=br0")
    d.resize(cpus=2, memory_mb=1024, disk_mb=3 * 1024)
    assert virtual_size(d.path("disk.qcow2")) == 3 << 30
    assert (d.config["CPUs"], d.config["Memory"], d.config["DiskSize"]) == (2, 1024, 3072)
    assert (d.config["Network"], d.config["Bridge"]) == ("bridge", "br0")


@needs_qemu_img
def test_resize_refuses_shrinking_below_the_real_disk(tmp_path):
    d = qemu_with_disk(tmp_path, gib=3)
    d.config["DiskSize"] = 1024  # a config.json that understates the disk: the disk itself decides
    with pytest.raises(DriverError, match='cannot shrink the disk of "m" from 3 GiB to 2 GiB: disks only grow'):
        d.resize(disk_mb=2048)
    assert virtual_size(d.path("disk.qcow2")) == 3 << 30 and d.config["DiskSize"] == 1024
    with pytest.raises(DriverError, match="--qemu-cpus must be >= 1"):
        d.resize(cpus=0)


@pytest.mark.parametrize("run_once", [True, False])
def test_guest_grows_its_root_on_every_boot(tmp_path, run_once):
    """cloud-init runs on the first boot only (run_once), so the seed installs a systemd unit that grows the root
    partition (growpart, Debian's cloud image) and file system (resize2fs, both image kinds) on every boot."""
    yaml = pytest.importorskip("yaml")
    user_data = yaml.safe_load(seed.render("m", "i", "ssh-ed25519 AAAA k", [], run_once=run_once)["user-data"])
    files = {f["path"]: f for f in user_data["write_files"]}
    script = files["/usr/local/sbin/dockyard-growroot"]
    assert script["permissions"] == "0755" and script["content"].startswith("#!/bin/sh\n")
    assert "growpart " in script["content"] and 'exec resize2fs "$dev"' in script["content"]
    (tmp_path / "growroot").write_text(script["content"])
    assert subprocess.run(["sh", "-n", str(tmp_path / "growroot")]).returncode == 0
    unit = files["/etc/systemd/system/dockyard-growroot.service"]["content"]
    assert "ExecStart=/usr/local/sbin/dockyard-growroot" in unit and "WantedBy=multi-user.target" in unit
    # Enabled before cloud-init switches itself off for later boots.
    assert user_data["runcmd"][0][:4] == ["systemctl", "enable", "--no-reload", "dockyard-growroot.service"]
    assert (["touch", "/etc/cloud/cloud-init.disabled"] in user_data["runcmd"]) == run_once


@needs_qemu_img
def test_resize_of_a_config_without_a_setting_is_a_clear_error(tmp_path):
    d = qemu_with_disk(tmp_path)
    del d.config["Restrict"]
    with pytest.raises(DriverError, match=r"^config.json lacks Restrict \(written by an older dockyard\?\)$"):
        d.resize(cpus=2)
    assert virtual_size(d.path("disk.qcow2")) == 2 << 30
