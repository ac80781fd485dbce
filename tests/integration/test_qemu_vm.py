"""A real VM end to end: `dockyard create -d qemu --qemu-restrict` under TCG (KVM is probed and, where it does not
work, skipped), then the real docker CLI over mutual TLS (docker load and run in the VM; the container is still
listed after stop/start), stop/start/restart/kill, and rm leaving nothing behind.

The guest image is built once and cached in $DOCKYARD_IMAGE_CACHE (default /var/cache/dockyard-tests/images).
The VM gets 1 GiB and 2 vCPUs, runs alone, and has no network but its 127.0.0.1 forwards (restrict=on).
"""

import json
import os
import signal

import pytest

from dockyard.drivers.qemu.driver import process_alive
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

        pid = qemu_pid(dockyard, name)
        assert pid
        dockyard("stop", name, timeout=300)
        assert dockyard("status", name).stdout.strip() == "Stopped" and not process_alive(pid)
        again = dockyard("stop", name, check=False)
        assert again.returncode == 1 and "is already stopped" in again.stderr + again.stdout

        dockyard("start", name, timeout=600)
        assert dockyard("status", name).stdout.strip() == "Running"
        again = dockyard("start", name, check=False)
        assert again.returncode == 1 and "is already running" in again.stderr + again.stdout
        # Same URL and the same (still valid) server certificate: the docker CLI verifies it.
        assert dockyard("url", name).stdout.strip() == url
        assert dockyard.docker(name, "version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"
        assert dockyard.docker(name, "ps", "-a", "--format", "{{.Names}}").stdout.split() == ["keeper"]

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
