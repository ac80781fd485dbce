"""dockyard's guest units (root growth, clock sync to the RTC): rendered scripts and units, in the seed, and the
install script that brings a machine made by an older dockyard up to date, run in a real Debian root (chroot of
an overlay on the test rootfs; systemctl, offline there, edits unit files and skips what needs a running systemd:
tests/integration/test_qemu_vm.py runs it against a booted guest)."""

import os
import subprocess

import pytest
import yaml

from dockyard.drivers.guestimage import guestunits, seed
from tests.hosts import rootfs

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb6 k"


def test_scripts_and_units():
    by_path = {f.path: f for f in guestunits.files()}
    for path in (guestunits.GROWROOT_PATH, guestunits.CLOCKSYNC_PATH):
        f = by_path[path]
        assert f.mode == 0o755 and f.content.startswith("#!/bin/sh\n")
        assert subprocess.run(["sh", "-n"], input=f.content, text=True).returncode == 0
    clock = by_path[guestunits.CLOCKSYNC_PATH].content
    # steps only beyond 2 s of skew, to the RTC (which QEMU keeps on the host's time), no network involved
    assert '[ "$skew" -gt 2 ] || [ "$skew" -lt -2 ] || exit 0' in clock and 'date -u -s "@$now"' in clock
    assert "/sys/class/rtc/rtc0/since_epoch" in clock
    timer = by_path["/etc/systemd/system/dockyard-clocksync.timer"].content
    assert "OnUnitActiveSec=30s" in timer and "AccuracySec=1s" in timer and "WantedBy=timers.target" in timer
    unit = by_path["/etc/systemd/system/dockyard-growroot.service"].content
    assert "ExecStart=/usr/local/sbin/dockyard-growroot" in unit and "WantedBy=multi-user.target" in unit
    assert guestunits.digest() == guestunits.digest() and len(guestunits.digest()) == 16


def test_seed_writes_enables_and_starts_them():
    data = yaml.safe_load(seed.render("m", "i", KEY, [])["user-data"])
    written = {f["path"]: f for f in data["write_files"]}
    for f in guestunits.files():
        assert written[f.path]["content"] == f.content and written[f.path]["permissions"] == f"0{f.mode:o}"
    assert data["runcmd"][:2] == [
        ["systemctl", "enable", "--no-reload", "dockyard-growroot.service", "dockyard-clocksync.timer"],
        ["systemctl", "start", "--no-block", "dockyard-clocksync.timer"],
    ]


@pytest.fixture
def debian_root(tmp_path):
    """Run shell as root in a chroot of an overlay on the test rootfs (private mount namespace); the overlay's
    upper dir shows what was written."""
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mount, chroot)")
    lower = rootfs.ensure_rootfs()
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()

    def run(script):
        mount = f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged}"
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'{mount} && exec chroot "$0" env SYSTEMD_OFFLINE=1 sh -s',
                merged,
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )

    run.upper = upper
    return run


def installed(out):
    return sorted(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("installed "))


def test_install_script_brings_an_old_machine_up_to_date(debian_root):
    paths = sorted(f.path for f in guestunits.files())
    first = debian_root(guestunits.install_script())
    assert first.returncode == 0, first.stderr
    assert installed(first.stdout) == paths
    for f in guestunits.files():
        on_disk = debian_root.upper / f.path.lstrip("/")
        assert on_disk.read_text() == f.content and (on_disk.stat().st_mode & 0o777) == f.mode
    wants = debian_root.upper / "etc/systemd/system"
    assert os.readlink(wants / "multi-user.target.wants/dockyard-growroot.service").endswith(
        "/dockyard-growroot.service"
    )
    assert os.readlink(wants / "timers.target.wants/dockyard-clocksync.timer").endswith("/dockyard-clocksync.timer")

    again = debian_root(guestunits.install_script())
    assert again.returncode == 0 and installed(again.stdout) == []  # up to date: nothing written

    # a machine of an older dockyard: its growroot differs, the clock sync units are missing
    (debian_root.upper / guestunits.GROWROOT_PATH.lstrip("/")).write_text("#!/bin/sh\nexec resize2fs /dev/vda\n")
    for name in ("dockyard-clocksync.service", "dockyard-clocksync.timer"):
        (wants / name).unlink()
    old = debian_root(guestunits.install_script())
    assert old.returncode == 0, old.stderr
    assert installed(old.stdout) == sorted(
        [
            guestunits.GROWROOT_PATH,
            "/etc/systemd/system/dockyard-clocksync.service",
            "/etc/systemd/system/dockyard-clocksync.timer",
        ]
    )
