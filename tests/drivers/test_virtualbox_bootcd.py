"""The media the virtualbox driver makes (VDI disk converted from the guest image, isolinux boot CD, cloud-init
seed) boot for real: under QEMU, attached to a SATA (AHCI) controller the way the driver attaches them in
VirtualBox. This is the part of the VirtualBox path that can be checked without VirtualBox."""

import os
import signal
import subprocess

import pytest

from dockyard.drivers.qemu import boot
from dockyard.drivers.qemu.driver import process_alive
from dockyard.drivers.virtualbox.driver import VirtualBoxDriver
from dockyard.provisioner.core.ssh import SSHSession

pytestmark = [pytest.mark.vm, pytest.mark.integration]


@pytest.fixture(scope="module")
def guest_image():
    from tests.integration.test_qemu_vm import ensure_guest_image

    return ensure_guest_image()


def test_virtualbox_media_boot_under_qemu(tmp_path, guest_image):
    mdir = tmp_path / "store" / "machines" / "vbq"
    mdir.mkdir(parents=True)
    d = VirtualBoxDriver("vbq", str(mdir))
    d.progress = lambda msg: None
    d.set_config_from_flags({"virtualbox_no_share": True, "virtualbox_memory": 1024})
    d.prepare_media()
    assert os.path.exists(d.path("boot.iso")) and os.path.exists(d.path("seed.iso"))
    pidfile = d.path("qemu.pid")
    sata = []
    for i, (path, kind) in enumerate(
        ((d.path("disk.vdi"), "hd"), (d.path("boot.iso"), "cd"), (d.path("seed.iso"), "cd"))
    ):
        fmt = "vdi" if kind == "hd" else "raw"
        media = ",media=cdrom,readonly=on" if kind == "cd" else ""
        sata += [
            "-drive",
            f"file={path},if=none,id=d{i},format={fmt}{media}",
            "-device",
            f"ide-{kind},drive=d{i},bus=sata.{i}",
        ]
    subprocess.run(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-display",
            "none",
            "-device",
            "ahci,id=sata",
            *sata,
            "-boot",
            "d",
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{d.config['SSHPort']}-:22",
            "-device",
            f"virtio-net-pci,netdev=n0,mac={d.config['NATMAC']}",
            "-serial",
            f"file:{d.path('serial.log')}",
            "-monitor",
            "none",
            "-pidfile",
            pidfile,
            "-daemonize",
        ],
        check=True,
    )
    with open(pidfile) as f:
        pid = int(f.read())
    try:
        boot.wait_for_login(
            "vbq", d.ssh_target(), lambda: pid if process_alive(pid) else None, d.path("serial.log"), 0, 600
        )
        with SSHSession(d.ssh_target()) as s:
            assert s.run("hostname").stdout.strip() == "vbq"
            assert s.run("findmnt -no SOURCE /").stdout.strip() == "/dev/sda"  # the VDI on SATA port 0
            cmdline = s.run("cat /proc/cmdline").stdout
            assert "BOOT_IMAGE=/vmlinuz" in cmdline and "initrd=/initrd" in cmdline  # booted by isolinux
    finally:
        os.kill(pid, signal.SIGKILL)
