"""The device allow-list on a pure cgroup v2 host (the qemu guest: Debian bookworm, systemd, unified
hierarchy only), where there is no devices controller and the engine attaches a BPF_CGROUP_DEVICE
program instead (engine/runtime/devicefilter.py, wired in cgroups.Cgroup.create).

The attack: a container with CAP_SYS_ADMIN mounts a tmpfs that allows device nodes, creates a node
for the guest's disk and reads it. Docker's allow-list permits the mknod ("b *:* m") but not the
open; a privileged container (no program attached, as Docker) shows the same commands do read the
disk, so the refusal is the program's. Also checks that seccomp is enforced there.
"""

import os
import signal

import pytest

from dockyard.drivers.qemu.driver import process_alive
from tests.images import busybox_tar
from tests.integration.test_qemu_vm import CACHE, guest_image, qemu_pid  # noqa: F401 (fixture)

pytestmark = [pytest.mark.vm, pytest.mark.integration]


def guest_disk(dockyard, name):
    """(major, minor) of the guest's first block device, from /proc/partitions."""
    lines = dockyard("ssh", name, "cat /proc/partitions").stdout.splitlines()
    for line in lines[2:]:
        fields = line.split()
        if len(fields) == 4:
            return int(fields[0]), int(fields[1])
    raise AssertionError("no block device in the guest: %r" % lines)


def test_cgroup2_device_filter_refuses_the_hosts_disk(dockyard, guest_image):  # noqa: F811
    env = {"DOCKYARD_IMAGE_CACHE": os.environ.get("DOCKYARD_IMAGE_CACHE", CACHE)}
    name = "cg2dev"
    try:
        dockyard(
            "create", "-d", "qemu", "--qemu-restrict", "--qemu-memory", "1024", "--qemu-cpus", "2", name,
            env=env, timeout=900,
        )  # fmt: skip
        info = dockyard.docker(name, "info", "--format", "{{.CgroupVersion}} {{json .SecurityOptions}}").stdout
        assert info.split()[0] == "2", info  # the guest is pure cgroup v2
        assert "name=seccomp,profile=builtin" in info, info
        assert dockyard.docker(name, "load", "-i", str(busybox_tar()), timeout=300).returncode == 0
        major, minor = guest_disk(dockyard, name)
        attack = (
            f"mkdir /tmp/m && mount -t tmpfs x /tmp/m && mknod /tmp/m/disk b {major} {minor} && echo mknod-ok && "
            "head -c1 /tmp/m/disk >/dev/null && echo read-ok"
        )
        p = dockyard.docker(
            name, "run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "sh", "-c", attack, check=False, timeout=300
        )
        assert p.stdout.split() == ["mknod-ok"], (p.stdout, p.stderr)
        assert "Operation not permitted" in p.stderr, p.stderr
        # Allowed devices still work through the same kind of node.
        p = dockyard.docker(
            name,
            "run",
            "--rm",
            "--cap-add",
            "SYS_ADMIN",
            "busybox",
            "sh",
            "-c",
            "mkdir /tmp/m && mount -t tmpfs x /tmp/m && mknod /tmp/m/null c 1 3 && echo x > /tmp/m/null && echo ok",
            timeout=300,
        )
        assert p.stdout.strip() == "ok"
        # Control: privileged containers get no program (as Docker), and the same commands read the disk.
        p = dockyard.docker(name, "run", "--rm", "--privileged", "busybox", "sh", "-c", attack, timeout=300)
        assert p.stdout.split() == ["mknod-ok", "read-ok"], (p.stdout, p.stderr)
        # Seccomp is on in the guest's containers (filter mode 2), off when privileged.
        status = "grep Seccomp: /proc/self/status"
        assert dockyard.docker(name, "run", "--rm", "busybox", "sh", "-c", status).stdout.split() == ["Seccomp:", "2"]
        p = dockyard.docker(name, "run", "--rm", "--privileged", "busybox", "sh", "-c", status)
        assert p.stdout.split() == ["Seccomp:", "0"]
    finally:
        pid = qemu_pid(dockyard, name)
        if pid:
            dockyard("rm", "-f", "-y", name, check=False, timeout=120)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
