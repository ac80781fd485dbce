"""End to end on a real test host (`dockyard create -d generic`), over mutual TLS: containers with
the real docker CLI and docker-py, a terminal session, and an engine restart with containers running.

The engine gets its own cgroup parent (--engine-opt cgroup-parent=dockyard-test-*); the test
removes it from the machine's cgroup tree afterwards.
"""

import json
import os
import re
import time
import uuid

import pytest

from dockyard.engine.runtime import cgroups
from tests.engine.pty_helper import run_in_pty
from tests.images import busybox_tar
from tests.integration.conftest import clean_env, docker_py

pytestmark = pytest.mark.integration


def docker_env(dockyard, name):
    env = clean_env()
    for line in dockyard("env", "--shell", "bash", name).stdout.splitlines():
        m = re.match(r'^export (\w+)="(.*)"$', line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def _remove_cgroup_parent(parent):
    lay = cgroups.layout()
    roots = [lay.v2root] if lay.version == "2" else sorted(set(lay.v1.values()))
    for root in roots:
        base = os.path.join(root, parent)
        if not os.path.isdir(base):
            continue
        for child in os.listdir(base):
            path = os.path.join(base, child)
            if os.path.isdir(path):
                cg = cgroups.Cgroup("1", {"x": path})
                cg.kill_all()
                cg.remove(timeout=2.0)
    cgroups.remove_parent(parent)


@pytest.fixture
def machine(dockyard, make_host):
    parent = "dockyard-test-" + uuid.uuid4().hex[:10]
    host = make_host()
    try:
        dockyard(
            "create",
            "-d",
            "generic",
            "--generic-ip-address",
            host.ip,
            "--generic-ssh-key",
            host.key_path,
            "--generic-ssh-user",
            "root",
            "--engine-opt",
            "cgroup-parent=" + parent,
            "ctr",
        )
        dockyard.docker("ctr", "load", "-i", str(busybox_tar()))
        yield host
    finally:
        try:
            ids = dockyard.docker("ctr", "ps", "-aq", check=False).stdout.split()
            if ids:
                dockyard.docker("ctr", "rm", "-f", *ids, check=False)
        finally:
            host.teardown()  # kills whatever still ran in the host's pid namespace
            _remove_cgroup_parent(parent)


def test_containers_with_the_cli_over_tls(dockyard, machine):
    d = lambda *a, **kw: dockyard.docker("ctr", *a, **kw)  # noqa: E731
    assert d("run", "--rm", "busybox", "echo", "hello").stdout == "hello\n"
    p = d("run", "--rm", "busybox", "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert (p.returncode, p.stderr) == (3, "oops\n")
    out = d(
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "K=V",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "--hostname",
        "box",
        "busybox",
        "sh",
        "-c",
        "echo $K $(pwd) $(id -un) $(hostname)",
    ).stdout
    assert out == "V /tmp nobody box\n"

    d(
        "run",
        "-d",
        "--name",
        "web",
        "--memory",
        "32m",
        "--cpus",
        "0.5",
        "--restart",
        "unless-stopped",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
    )
    _wait_for(lambda: "line 2" in d("logs", "web").stdout)
    info = json.loads(d("inspect", "web").stdout)[0]
    assert info["State"]["Running"] and info["HostConfig"]["Memory"] == 32 << 20
    assert info["NetworkSettings"]["Networks"]
    assert d("exec", "web", "cat", "/etc/hostname").stdout.strip() == info["Config"]["Hostname"]
    code, term = run_in_pty(
        ["docker", "exec", "-it", "web", "sh"], [b"echo in-$((6*7))\r", b"exit 3\r"], env=docker_env(dockyard, "ctr")
    )
    assert code == 3 and b"in-42" in term
    code, term = run_in_pty(
        ["docker", "run", "-it", "--rm", "busybox", "sh"], [b"tty\r", b"exit\r"], env=docker_env(dockyard, "ctr")
    )
    assert code == 0 and b"/dev/pts/0" in term
    assert "web" in d("ps", "--format", "{{.Names}}").stdout.split()
    assert d("stats", "--no-stream", "--format", "{{.Name}}", "web").stdout.strip() == "web"
    assert "while true" in d("top", "web").stdout

    # The engine restarts (upgrade, crash): the container keeps running, its log keeps growing.
    log_path = info["LogPath"]
    machine.exec("/usr/local/lib/dockyard/engine-ctl stop", check=True)
    n = machine.exec(f"wc -l < {log_path}").stdout.strip()
    time.sleep(0.6)
    assert int(machine.exec(f"wc -l < {log_path}").stdout.strip()) > int(n)
    machine.exec("/usr/local/lib/dockyard/engine-ctl start", check=True)
    _wait_for(lambda: d("version", check=False).returncode == 0)
    assert json.loads(d("inspect", "web").stdout)[0]["State"]["Pid"] == info["State"]["Pid"]
    lines = d("logs", "web").stdout.count("\n")
    _wait_for(lambda: d("logs", "web").stdout.count("\n") > lines)
    d("stop", "-t", "1", "web")
    assert d("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "web").stdout.strip() == "exited 137"
    d("rm", "web")
    assert d("ps", "-aq").stdout == ""


def test_containers_with_docker_py(dockyard, machine, monkeypatch):
    client = docker_py(dockyard, "ctr", monkeypatch)
    assert client.containers.run("busybox", "echo from-py", remove=True) == b"from-py\n"
    c = client.containers.run("busybox", "sh -c 'echo started; sleep 60'", detach=True, name="py")
    try:
        _wait_for(lambda: c.logs() == b"started\n")
        assert c.exec_run("echo hi") == (0, b"hi\n")
        assert c.exec_run(["sh", "-c", "exit 4"]).exit_code == 4
        c.reload()
        assert c.status == "running"
        c.stop(timeout=1)
        assert c.wait()["StatusCode"] == 137
    finally:
        c.remove(force=True)


def _wait_for(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
