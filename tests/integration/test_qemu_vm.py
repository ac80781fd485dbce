"""A real VM end to end: `dockyard create -d qemu --qemu-restrict` under TCG (KVM is probed and, where it does not
work, skipped), then the real docker CLI over mutual TLS (docker load and run in the VM; the container is still
listed after stop/start), the guest's clock stepped back to the RTC (after a freeze like a laptop's sleep, and
after being set an hour off), `dockyard set --disk` growing the root file system at the next start (also for a
machine made before the guest units existed: start installs them), stop/start/restart/kill, and rm leaving
nothing behind.

The guest image is built once and cached in $DOCKYARD_IMAGE_CACHE (default /var/cache/dockyard-tests/images).
The VM gets 1 GiB and 2 vCPUs, runs alone, and has no network but its 127.0.0.1 forwards (restrict=on).
"""

import json
import os
import signal
import time

import pytest

from dockyard.drivers.guestimage import guestunits
from dockyard.drivers.qemu.driver import process_alive
from dockyard.drivers.qemu.qmp import QMP
from tests.images import busybox_tar

pytestmark = [pytest.mark.vm, pytest.mark.integration]

CACHE = os.environ.get("DOCKYARD_IMAGE_CACHE") or "/var/cache/dockyard-tests/images"
NEEDS = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4")


def ensure_guest_image(log=print):
    """The cached guest image (built on first use; needs root and the tools of .ci/vm-deps.sh)."""
    if os.geteuid() != 0:
        pytest.skip("building the guest image needs root")
    from dockyard.drivers.guestimage import build, tools

    missing = [t for t in NEEDS if not tools.find(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: run .ci/vm-deps.sh")
    os.environ.setdefault(build.CACHE_ENV, CACHE)
    return build.ensure_image(os.path.dirname(CACHE), log=log)


@pytest.fixture(scope="module")
def guest_image(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")

    def log(msg):
        if reporter and capman:
            with capman.global_and_fixture_disabled():
                reporter.write_line(msg)

    return ensure_guest_image(log)


def machine_config(dockyard, name):
    with open(os.path.join(dockyard.store, "machines", name, "config.json")) as f:
        return json.load(f)


def qemu_pid(dockyard, name):
    try:
        with open(os.path.join(dockyard.store, "machines", name, "qemu.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid, "qemu.pid") else None


def guest_clock_skew(dockyard, name):
    """(seconds the guest's clock is off the host's, uncertainty): the guest's time against the middle of the
    host's times before and after asking."""
    before = time.time()
    guest = float(dockyard("ssh", name, "date +%s.%N").stdout)
    after = time.time()
    return guest - (before + after) / 2, (after - before) / 2


def wait_clock_synced(dockyard, name, within):
    """Seconds until the guest's clock is back within 2 s of the host's (fails after `within` seconds)."""
    started = time.monotonic()
    while True:
        skew, unsure = guest_clock_skew(dockyard, name)
        if abs(skew) <= 2 + unsure:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"the guest's clock is still {skew:.1f}s off after {within}s"
        time.sleep(2)


def root_fs_bytes(dockyard, name):
    return int(dockyard("ssh", name, "df -B1 --output=size / | tail -n 1").stdout)


def check_guest_clock(dockyard, name):
    """The guest's clock comes back to the host's within the clock sync period: after QEMU was frozen (what a
    sleeping laptop does to it; the RTC keeps the host's time) and after it was set an hour off."""
    period = guestunits.CLOCK_PERIOD + 15  # + the time one check over SSH takes under emulation
    assert abs(guest_clock_skew(dockyard, name)[0]) < 3
    qmp = os.path.join(dockyard.store, "machines", name, "qmp.sock")
    with QMP(qmp) as q:
        q.execute("stop")
        time.sleep(12)
        q.execute("cont")
    skew, _ = guest_clock_skew(dockyard, name)
    assert skew < -6  # the guest's clock stood still while it was frozen
    wait_clock_synced(dockyard, name, period)
    dockyard("ssh", name, "sudo date -u -s @$(( $(date +%s) - 3600 )) >/dev/null")
    assert guest_clock_skew(dockyard, name)[0] < -3000
    wait_clock_synced(dockyard, name, period)
    log = dockyard("ssh", name, "sudo journalctl -u dockyard-clocksync.service -o cat --no-pager").stdout
    assert "the system clock was 36" in log, log  # ~3600 s off, stepped


def test_qemu_machine_lifecycle(dockyard, guest_image):
    env = {"DOCKYARD_IMAGE_CACHE": os.environ.get("DOCKYARD_IMAGE_CACHE", CACHE)}
    name = "qvm"
    try:
        r = dockyard(
            "create",
            "-d",
            "qemu",
            "--qemu-restrict",
            "--qemu-image",
            "build",
            "--qemu-memory",
            "1024",
            "--qemu-cpus",
            "2",
            name,
            env=env,
            timeout=900,
        )
        assert "Docker is up and running!" in r.stdout
        # the seed carried the engine's files and started it during the boot: provisioning rewrote nothing
        assert "already installed and running with this configuration" in r.stdout
        assert "Copying" not in r.stdout and "Starting the engine" not in r.stdout
        cfg = machine_config(dockyard, name)["Driver"]
        assert cfg["Restrict"] is True and cfg["AccelUsed"] in ("kvm", "tcg")
        url = f"tcp://127.0.0.1:{cfg['EngineHostPort']}"
        assert dockyard("url", name).stdout.strip() == url
        assert dockyard("ip", name).stdout.strip() == "127.0.0.1"
        assert dockyard("status", name).stdout.strip() == "Running"

        v = dockyard.docker(name, "version", "--format", "{{.Server.Version}} {{.Server.Os}}")
        assert v.stdout.split()[1] == "linux"
        info = dockyard.docker(name, "info", "--format", "{{.Name}} {{.OperatingSystem}}")
        assert info.stdout.split()[0] == name and "Debian" in info.stdout
        assert dockyard("ssh", name, "cat /etc/hostname").stdout.strip() == name

        # containers run in the VM and outlive a stop/start of the machine
        assert dockyard.docker(name, "load", "-i", str(busybox_tar()), timeout=300).returncode == 0
        assert dockyard.docker(name, "run", "--rm", "busybox", "echo", "hello", timeout=300).stdout == "hello\n"
        dockyard.docker(name, "create", "--name", "keeper", "busybox", "true")

        # cloud-init's later stages ran in the background of provisioning (lowest CPU weight, a fifth of a CPU)
        later = dockyard("ssh", name, "systemctl show -p CPUWeight -p CPUQuotaPerSecUSec cloud-final.service")
        assert sorted(later.stdout.split()) == ["CPUQuotaPerSecUSec=200ms", "CPUWeight=1"]
        check_guest_clock(dockyard, name)
        size = root_fs_bytes(dockyard, name)
        assert 18 << 30 < size <= 20 << 30  # the default 20 GiB disk

        pid = qemu_pid(dockyard, name)
        assert pid
        dockyard("stop", name, timeout=300)
        assert dockyard("status", name).stdout.strip() == "Stopped" and not process_alive(pid)
        again = dockyard("stop", name, check=False)
        assert again.returncode == 1 and "is already stopped" in again.stderr + again.stdout

        # the disk grows while stopped; the guest's root file system follows at the next boot (dockyard-growroot)
        dockyard("set", name, "--disk", "22")
        r = dockyard("start", name, timeout=600)
        assert "guest units" not in r.stdout  # made by this dockyard: nothing to install
        assert root_fs_bytes(dockyard, name) >= size + (int(1.8 * (1 << 30)))
        assert dockyard("status", name).stdout.strip() == "Running"
        again = dockyard("start", name, check=False)
        assert again.returncode == 1 and "is already running" in again.stderr + again.stdout
        # Same URL and the same (still valid) server certificate: the docker CLI verifies it.
        assert dockyard("url", name).stdout.strip() == url
        assert dockyard.docker(name, "version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"
        assert dockyard.docker(name, "ps", "-a", "--format", "{{.Names}}").stdout.split() == ["keeper"]

        # A machine made before the guest units existed: none in the guest, none recorded. Start installs them,
        # and the disk grown by `set --disk` before that start grows at once.
        units = " ".join(f.path for f in guestunits.files())
        dockyard("ssh", name, "sudo systemctl disable --now dockyard-clocksync.timer dockyard-growroot.service")
        dockyard("ssh", name, f"sudo rm {units} && sudo systemctl daemon-reload")
        dockyard("stop", name, timeout=300)
        config_path = os.path.join(dockyard.store, "machines", name, "config.json")
        config = machine_config(dockyard, name)
        del config["Driver"]["GuestUnits"]
        with open(config_path, "w") as f:
            json.dump(config, f)
        dockyard("set", name, "--disk", "24")
        r = dockyard("start", name, timeout=600)
        assert "Installing dockyard's guest units" in r.stdout
        assert root_fs_bytes(dockyard, name) >= 23 << 30
        state = dockyard(
            "ssh",
            name,
            "systemctl is-enabled dockyard-growroot.service dockyard-clocksync.timer; "
            "systemctl is-active dockyard-clocksync.timer",
        ).stdout.split()
        assert state == ["enabled", "enabled", "active"]
        assert machine_config(dockyard, name)["Driver"]["GuestUnits"] == guestunits.digest()

        first = qemu_pid(dockyard, name)
        dockyard("restart", name, timeout=600)
        assert qemu_pid(dockyard, name) not in (None, first)
        assert dockyard.docker(name, "info", "--format", "{{.Name}}").stdout.strip() == name

        last = qemu_pid(dockyard, name)
        dockyard("kill", name, timeout=120)
        assert dockyard("status", name).stdout.strip() == "Stopped" and not process_alive(last)

        # (rm of a running VM is covered by tests/drivers/test_qemu_process.py, without booting a guest)
        dockyard("rm", "-y", name, timeout=120)
        assert not os.path.exists(os.path.join(dockyard.store, "machines", name))
        assert dockyard("ls", "-q").stdout.strip() == ""
    finally:
        pid = qemu_pid(dockyard, name)
        if pid:  # a failed step must not leave a VM running
            dockyard("rm", "-f", "-y", name, check=False, timeout=120)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
