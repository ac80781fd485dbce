"""Published ports -> QEMU host forwards: which ports a container list publishes, and Forwards.apply against a
real QEMU (firmware only, no guest, restrict=on): rules appear as listeners on 127.0.0.1 and go away again,
a port another program holds is reported once as a warning and retried, never a silent failure."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from dockyard.drivers.qemu import portfwd
from dockyard.drivers.qemu.qmp import QMP


def ctr(name, *ports):
    return {"Names": [f"/{name}"], "Ports": list(ports)}


def test_published_ports_from_the_container_list():
    containers = [
        ctr("web", {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}),
        ctr("web6", {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}),
        ctr("dns", {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}),
        ctr("only-exposed", {"PrivatePort": 9000, "Type": "tcp"}),
        ctr("other-ip", {"IP": "192.0.2.1", "PrivatePort": 1, "PublicPort": 7000, "Type": "tcp"}),
        ctr("sctp", {"IP": "0.0.0.0", "PrivatePort": 1, "PublicPort": 7001, "Type": "sctp"}),
    ]
    assert portfwd.published(containers) == {("tcp", 8080): "web", ("udp", 5353): "dns"}


def bindable(port, kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def qemu(tmp_path):
    binary = shutil.which("qemu-system-x86_64")
    if not binary:
        pytest.skip("needs qemu-system-x86 (.ci/vm-deps.sh)")
    sock, pidfile = str(tmp_path / "qmp.sock"), str(tmp_path / "qemu.pid")
    subprocess.run(
        [binary, "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-monitor", "none"]
        + ["-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0"]
        + ["-qmp", f"unix:{sock},server=on,wait=off", "-pidfile", pidfile, "-daemonize"],
        check=True,
    )
    with open(pidfile) as f:
        pid = int(f.read())
    yield sock, pid
    os.kill(pid, signal.SIGKILL)


def test_forwards_follow_the_wanted_set_and_report_conflicts(qemu):
    sock, pid = qemu
    lines = []
    fw = portfwd.Forwards(portfwd.QemuPorts(sock, pid), lines.append)
    tcp, udp = free_port(), free_port()
    fw.apply({("tcp", tcp): "web", ("udp", udp): "dns"})
    assert not bindable(tcp) and not bindable(udp, socket.SOCK_DGRAM)
    with QMP(sock) as q:
        table = q.execute("human-monitor-command", **{"command-line": "info usernet"})
    assert f"127.0.0.1 {tcp}" in " ".join(table.split()) and "UDP[HOST_FORWARD]" in table
    assert fw.state()["Forwarded"] == {f"{tcp}/tcp": "web", f"{udp}/udp": "dns"}

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        fw.apply({("tcp", taken): "busy"})  # web and dns stopped, busy started on a port someone holds
        assert bindable(tcp) and bindable(udp, socket.SOCK_DGRAM)
        assert fw.state() == {"Forwarded": {}, "Conflicts": {f"{taken}/tcp": "busy"}}
        warnings = [line for line in lines if line.startswith("Warning:")]
        assert len(warnings) == 1 and f"127.0.0.1:{taken}/tcp" in warnings[0] and "busy" in warnings[0]
        assert "(QEMU: " in warnings[0]
        fw.active.clear()  # the next event retries the conflict, without a second warning
        fw.apply({("tcp", taken): "busy"})
        assert len([line for line in lines if line.startswith("Warning:")]) == 1
    finally:
        holder.close()
    time.sleep(0.1)
    fw.apply({("tcp", taken): "busy"})  # freed: now it is forwarded
    assert fw.state() == {"Forwarded": {f"{taken}/tcp": "busy"}, "Conflicts": {}}
    fw.apply({})
    assert fw.state() == {"Forwarded": {}, "Conflicts": {}} and bindable(taken)
