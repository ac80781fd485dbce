"""Tests of the test-host fixtures themselves: reachability, isolation, users, keys, cleanup."""

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.hosts import netns_host
from tests.hosts.netns_host import TestHost

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def run(client: paramiko.SSHClient, cmd: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(cmd, timeout=30)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def leftovers(host: TestHost) -> list[str]:
    """Everything of `host` that still exists on the machine."""
    found = []
    if host.netns in netns_host._netns_names():
        found.append("netns " + host.netns)
    if host.veth in netns_host._link_names():
        found.append("link " + host.veth)
    if host.dir.exists():
        found.append("dir " + str(host.dir))
    found += [f"pid {p}" for p in netns_host._processes_mentioning(str(host.dir) + "/")]
    return found


def test_two_hosts_each_reachable_as_root_with_own_key(make_host):
    a, b = make_host(name="alpha"), make_host(name="beta")
    assert a.ip != b.ip and a.key_path != b.key_path
    for host in (a, b):
        assert oct(os.stat(host.key_path).st_mode & 0o777) == "0o600"
        with host.connect("root") as client:
            assert run(client, "hostname") == (0, host.name + "\n", "")
            assert run(client, "id -u")[1] == "0\n"
            assert run(client, "cat /proc/1/comm")[1] == "sshd\n"
            rc, out, _ = run(client, "python3 -c 'import sys; print(*sys.version_info[:2])'")
            assert rc == 0 and tuple(map(int, out.split())) >= (3, 9)
    # b's client key is not authorized on a
    with pytest.raises(paramiko.AuthenticationException):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                a.ip, username="root", key_filename=str(b.key_path), look_for_keys=False, allow_agent=False, timeout=10
            )
        finally:
            client.close()


def test_each_host_answers_only_on_its_own_address(make_host):
    a, b = make_host(), make_host()
    assert a.served_host_key() == " ".join(a.host_public_key.split()[:2])
    assert b.served_host_key() == " ".join(b.host_public_key.split()[:2])
    assert a.served_host_key() != b.served_host_key()
    assert f"inet {a.ip}/30" in a.exec("ip -4 -o addr show dev eth0", check=True).stdout
    probe = "import socket; socket.create_connection(('%s', 22), timeout=3)"
    blocked = a.exec(["python3", "-c", probe % b.ip])
    assert blocked.returncode != 0 and "unreachable" in blocked.stderr
    assert a.exec(["python3", "-c", probe % a.ip]).returncode == 0


def test_sudo_without_password_only_for_tester(make_host):
    host = make_host()
    with host.connect("tester") as client:
        assert run(client, "sudo -n id -u") == (0, "0\n", "")
    with host.connect("pwuser") as client:
        rc, _, err = run(client, "sudo -n true")
        assert rc != 0 and "password is required" in err


def test_exec_and_rootfs_dir_see_the_hosts_root(make_host):
    host = make_host(name="inside")
    assert (host.rootfs_dir / "etc/hostname").read_text() == "inside\n"
    (host.rootfs_dir / "root/marker").write_text("from outside\n")
    assert host.exec("cat /root/marker", check=True).stdout == "from outside\n"
    # the machine's cgroup mounts are visible inside (engines need them)
    inside = host.exec("ls /sys/fs/cgroup", check=True).stdout.split()
    assert inside == sorted(os.listdir("/sys/fs/cgroup"))
    # the image's files are not touched by the host
    assert not (host.lower / "root/marker").exists()


def test_regenerate_host_key_changes_what_the_server_presents(make_host):
    host = make_host()
    old_line = host.host_public_key
    old = host.served_host_key()
    new_line = host.regenerate_host_key()
    assert host.served_host_key() == " ".join(new_line.split()[:2]) != old
    with host.connect() as client:  # pinned to the new key
        assert run(client, "true")[0] == 0
    client = paramiko.SSHClient()
    kind, b64 = old_line.split()[:2]
    client.get_host_keys().add(host.ip, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(
            host.ip,
            username="root",
            key_filename=str(host.key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    client.close()


def test_teardown_removes_everything_and_is_idempotent(rootfs):
    host = TestHost(rootfs, name="gone")
    with host:
        assert leftovers(host) != []
        pid = host.init_pid
    assert leftovers(host) == []
    assert not netns_host._alive(pid)
    host.teardown()  # second time: nothing to do, no error
    assert leftovers(host) == []


def test_failed_start_leaves_nothing(rootfs, tmp_path):
    # a tree that passes the first checks but cannot be mounted as a root: the setup script dies
    for d in ("etc/ssh", "root/.ssh", "home/tester/.ssh", "home/pwuser/.ssh", "usr/sbin"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "usr/sbin/sshd").write_text("")
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\ntester:x:1000:1000::/home/tester:/bin/sh\n"
        "pwuser:x:1001:1001::/home/pwuser:/bin/sh\n"
    )
    host = TestHost(tmp_path, name="broken")
    with pytest.raises(RuntimeError, match="exited"):
        host.start(timeout=20)
    assert leftovers(host) == []


def test_cleanup_stale_removes_hosts_of_dead_runs_only(make_host, rootfs):
    mine = make_host()
    code = (
        "import sys, time; from tests.hosts.netns_host import TestHost; "
        "h = TestHost(sys.argv[1]).start(); print(h.netns, h.veth, h.dir, flush=True); time.sleep(600)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(rootfs)],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        netns, veth, state = child.stdout.readline().split()
    finally:
        child.send_signal(signal.SIGKILL)  # a crashed pytest: no teardown runs
        child.wait()
    assert netns in netns_host._netns_names() and Path(state).exists()
    removed = netns_host.cleanup_stale()
    # Deleting the netns may take the veth pair with it before the link pass runs: either way it is gone.
    assert "netns " + netns in removed
    for _ in range(50):
        if veth not in netns_host._link_names():
            break
        time.sleep(0.1)
    assert netns not in netns_host._netns_names() and veth not in netns_host._link_names()
    assert not Path(state).exists() and netns_host._processes_mentioning(state + "/") == []
    # the live host of this (running) process was left alone
    assert leftovers(mine) != [] and mine.served_host_key()


def test_systemd_host_boots_with_systemd_as_pid1(make_host):
    host = make_host(systemd=True, name="booted")
    assert host.exec("cat /proc/1/comm", check=True).stdout == "systemd\n"
    state = host.exec("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded")
    with host.connect() as client:
        assert run(client, "hostname")[1] == "booted\n"
        assert run(client, "ps -o comm= -p 1")[1] == "systemd\n"
        assert run(client, "systemctl is-active ssh.service")[1] == "active\n"
    pid = host.init_pid
    host.teardown()
    assert leftovers(host) == [] and not netns_host._alive(pid)
