"""The container runtime end to end on this machine: a real engine (own netns + mount ns, own
cgroup parent) driven by the real docker CLI and docker-py over its unix socket.

Networking is --network none/host here (the bridge is the network part's, tested on test hosts).
"""

import json
import os
import re
import time

import pytest

from tests.engine.pty_helper import run_in_pty

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

N = ("--network", "none")


def run(eng, *args, **kw):
    return eng.docker("run", "--rm", *N, "busybox", *args, **kw)


def test_run_echo_exit_codes_and_missing_command(eng):
    assert run(eng, "echo", "hello").stdout == "hello\n"
    p = run(eng, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")
    p = run(eng, "nonexistent-cmd", check=False)
    assert p.returncode == 127 and "executable file not found in $PATH" in p.stderr
    assert eng.docker("ps", "-aq").stdout == ""  # --rm removed them all, also the failed one


def test_config_options(eng):
    out = run(eng, "sh", "-c", "echo $K; pwd; id -u; id -g; hostname; cat /etc/hostname; echo $HOME", check=True).stdout
    assert out.split("\n")[2:4] == ["0", "0"]
    p = eng.docker(
        "run",
        "--rm",
        *N,
        "-e",
        "K=V",
        "-w",
        "/tmp/wd",
        "-u",
        "65534:65534",
        "--hostname",
        "myhost",
        "busybox",
        "sh",
        "-c",
        "echo $K; pwd; id -u; id -g; hostname; echo $HOME",
    )
    assert p.stdout.split("\n")[:6] == ["V", "/tmp/wd", "65534", "65534", "myhost", "/nonexistent"]
    p = eng.docker("run", "--rm", *N, "-u", "nobody", "busybox", "id")
    assert p.stdout.startswith("uid=65534(nobody) gid=65534(nobody)")
    p = eng.docker("run", "--rm", *N, "-u", "ghost", "busybox", "id", check=False)
    assert p.returncode != 0 and "unable to find user ghost" in p.stderr
    p = eng.docker("run", "--rm", *N, "--entrypoint", "/bin/echo", "busybox", "a", "b")
    assert p.stdout == "a b\n"


def test_mounts_readonly_and_tmpfs(eng, tmp_path):
    (tmp_path / "f").write_text("bound\n")
    p = eng.docker(
        "run",
        "--rm",
        *N,
        "-v",
        f"{tmp_path}:/data",
        "-v",
        f"{tmp_path}:/ro:ro",
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "sh",
        "-c",
        "cat /data/f; echo new > /data/g; touch /ro/h; echo ro=$?; grep ' /scratch ' /proc/mounts",
    )
    assert p.stdout.startswith("bound\nro=1\ntmpfs /scratch tmpfs rw,nosuid,nodev,noexec")
    assert (tmp_path / "g").read_text() == "new\n" and not (tmp_path / "h").exists()
    p = eng.docker(
        "run",
        "--rm",
        *N,
        "--read-only",
        "busybox",
        "sh",
        "-c",
        "touch /x; echo root=$?; echo ok > /etc/hosts.x; echo etc=$?",
    )
    assert p.stdout == "root=1\netc=1\n"
    p = eng.docker("run", "--rm", *N, "-v", "named-vol:/v", "busybox", "sh", "-c", "echo kept > /v/k")
    p = eng.docker("run", "--rm", *N, "-v", "named-vol:/v", "busybox", "cat", "/v/k")
    assert p.stdout == "kept\n"


def test_security_defaults_and_escape_attempts(eng):
    status = run(eng, "cat", "/proc/self/status").stdout
    caps = dict(re.findall(r"^(Cap\w+):\s+(\w+)$", status, re.M))
    assert int(caps["CapEff"], 16) == 0xA80425FB  # Docker's default set
    assert int(caps["CapBnd"], 16) == 0xA80425FB
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    script = (
        "mount -t tmpfs x /tmp 2>&1 | grep -c 'permission denied'; "
        "echo 1 > /proc/sys/kernel/panic 2>/dev/null; echo procsys=$?; "
        "echo b > /proc/sysrq-trigger 2>/dev/null; echo sysrq=$?; "
        "mknod /tmp/disk b 8 0 && head -c1 /tmp/disk >/dev/null 2>&1; echo blockdev=$?; "
        "head -c 100 /dev/zero > /tmp/m.ko; insmod /tmp/m.ko 2>&1; "
        "ls /proc | grep -c '^[0-9]'; ps -o pid | wc -l; "
        "ls /run/dockyard /tmp/dyrt-* 2>&1 | head -1; ls /sys/fs/cgroup | wc -l"
    )
    out = run(eng, "sh", "-c", script).stdout.splitlines()
    assert out[:4] == ["1", "procsys=1", "sysrq=1", "blockdev=1"], out
    # No CAP_SYS_MODULE (kernels built without module support answer ENOSYS first).
    assert "not permitted" in out[4] or "not support" in out[4], out
    assert int(out[5]) <= 4 and int(out[6]) <= 4  # only our own few processes are visible
    assert "No such file or directory" in out[7]  # no engine socket, no engine state
    p = eng.docker(
        "run", "--rm", *N, "--cap-drop", "NET_RAW", "busybox", "ping", "-c", "1", "-W", "1", "127.0.0.1", check=False
    )
    assert p.returncode != 0 and "permission denied" in p.stderr.lower()
    p = eng.docker("run", "--rm", *N, "busybox", "ping", "-c", "1", "-W", "1", "127.0.0.1", check=False)
    assert p.returncode == 0, p.stderr
    p = eng.docker(
        "run",
        "--rm",
        *N,
        "--privileged",
        "busybox",
        "sh",
        "-c",
        "mount -t tmpfs x /tmp && echo mounted; grep NoNewPrivs /proc/self/status",
    )
    assert p.stdout.split("\n")[0] == "mounted" and "NoNewPrivs:\t0" in p.stdout


def test_resources_and_oom(eng):
    cid = eng.docker(
        "run",
        "-d",
        *N,
        "--memory",
        "16m",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--pids-limit",
        "20",
        "busybox",
        "sleep",
        "30",
    ).stdout.strip()
    try:
        assert open(eng.cgroup_file("memory", cid, "memory.limit_in_bytes")).read().strip() == str(16 << 20)
        assert open(eng.cgroup_file("cpu", cid, "cpu.cfs_quota_us")).read().strip() == "50000"
        assert open(eng.cgroup_file("cpu", cid, "cpu.shares")).read().strip() == "512"
        assert open(eng.cgroup_file("pids", cid, "pids.max")).read().strip() == "20"
        p = eng.docker("exec", cid, "sh", "-c", "for i in $(seq 30); do sleep 5 & done 2>&1; wait", check=False)
        assert "can't fork" in p.stdout + p.stderr
    finally:
        eng.docker("rm", "-f", cid)
    assert not os.path.exists(eng.cgroup_file("memory", cid, ""))
    p = eng.docker(
        "run",
        *N,
        "--name",
        "oom",
        "--memory",
        "8m",
        "busybox",
        "sh",
        "-c",
        "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived",
        check=False,
    )
    state = json.loads(eng.docker("inspect", "oom").stdout)[0]["State"]
    assert p.returncode == 137 and state["OOMKilled"] is True and state["ExitCode"] == 137
    eng.docker("rm", "oom")


def test_lifecycle_logs_stop_kill_pause_rename_top_stats(eng):
    eng.docker(
        "run",
        "-d",
        *N,
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        'trap "echo bye; exit 3" TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done',
    )
    deadline = time.monotonic() + 20
    while "tick 3" not in eng.docker("logs", "ticker").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    tail = eng.docker("logs", "--tail", "2", "-t", "ticker").stdout.splitlines()
    assert len(tail) == 2 and all(re.match(r"^\d{4}-\d\d-\d\dT[\d:.]{18}Z tick \d+$", l) for l in tail)
    info = json.loads(eng.docker("inspect", "ticker").stdout)[0]
    for key in ("State", "Config", "HostConfig", "NetworkSettings"):
        assert info[key] is not None
    assert info["HostConfig"]["LogConfig"]["Type"] == "json-file" and info["State"]["Running"]
    top = eng.docker("top", "ticker").stdout
    assert "PID" in top.splitlines()[0] and "while true" in top
    stats = eng.docker("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "ticker").stdout
    assert stats.split()[0] == "ticker" and int(stats.split()[1]) >= 1
    eng.docker("pause", "ticker")
    freezer = eng.cgroup_file("freezer", info["Id"], "freezer.state")
    assert open(freezer).read().strip() == "FROZEN"
    assert "(Paused)" in eng.docker("ps", "--format", "{{.Status}}", "-f", "name=ticker").stdout
    eng.docker("unpause", "ticker")
    eng.docker("rename", "ticker", "ticker2")
    assert eng.docker("ps", "--format", "{{.Names}}", "-f", "status=running").stdout.split() == ["ticker2"]
    p = eng.docker("kill", "-s", "WINCH", "ticker2")  # not a stop: keeps running
    assert eng.docker("inspect", "-f", "{{.State.Running}}", "ticker2").stdout.strip() == "true"
    eng.docker("stop", "ticker2")
    state = json.loads(eng.docker("inspect", "ticker2").stdout)[0]["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 3
    assert eng.docker("logs", "ticker2").stdout.endswith("bye\n")
    assert eng.docker("wait", "ticker2").stdout.strip() == "3"
    assert "Exited (3)" in eng.docker("ps", "-a", "--format", "{{.Status}}", "-f", "name=ticker2").stdout
    p = eng.docker("stop", "ticker2")  # 304: the CLI still prints the name
    assert p.stdout.strip() == "ticker2"
    p = eng.docker("kill", "ticker2", check=False)
    assert p.returncode == 1 and "is not running" in p.stderr
    eng.docker("start", "ticker2")
    p = eng.docker("rm", "ticker2", check=False)
    assert p.returncode == 1 and "container is running" in p.stderr
    eng.docker("rm", "-f", "ticker2")
    p = eng.docker("inspect", "ticker2", check=False)
    assert p.returncode == 1


def test_logs_follow_ends_when_the_container_stops(eng):
    cid = eng.docker("run", "-d", *N, "busybox", "sh", "-c", "echo one; sleep 0.5; echo two").stdout.strip()
    p = eng.docker("logs", "-f", cid, timeout=30)
    assert p.stdout == "one\ntwo\n"
    eng.docker("rm", cid)


def test_stdin_attach_tty_exec_and_detach_keys(eng):
    p = eng.docker("run", "-i", "--rm", *N, "busybox", "sh", "-c", "while read l; do echo got $l; done", input="a\nb\n")
    assert p.stdout == "got a\ngot b\n"
    code, out = run_in_pty(
        ["docker", "run", "-it", "--rm", *N, "busybox", "sh"],
        [b"echo hi-$((40+2))\r", b"tty\r", b"exit 5\r"],
        env=eng.env(),
    )
    assert code == 5 and b"hi-42" in out and b"/dev/pts/0" in out
    cid = eng.docker("run", "-dit", *N, "busybox", "sh").stdout.strip()
    code, out = run_in_pty(["docker", "exec", "-it", cid, "sh"], [b"echo in-$((1+1))\r", b"exit 4\r"], env=eng.env())
    assert code == 4 and b"in-2" in out
    code, out = run_in_pty(["docker", "attach", cid], [b"echo attached\r", b"\x10\x11"], env=eng.env())
    assert b"attached" in out and b"read escape sequence" in out
    assert eng.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
    eng.docker("rm", "-f", cid)


def test_exec_exit_codes_env_user_workdir(eng):
    cid = eng.docker("run", "-d", *N, "busybox", "sleep", "60").stdout.strip()
    try:
        p = eng.docker(
            "exec",
            "-e",
            "X=1",
            "-w",
            "/tmp",
            "-u",
            "nobody",
            cid,
            "sh",
            "-c",
            "echo $X; pwd; id -un; exit 7",
            check=False,
        )
        assert (p.returncode, p.stdout) == (7, "1\n/tmp\nnobody\n")
        p = eng.docker("exec", cid, "nosuchbinary", check=False)
        assert p.returncode == 127 and "executable file not found" in p.stdout + p.stderr
        eng.docker("exec", "-d", cid, "sh", "-c", "echo detached > /tmp/d")
        deadline = time.monotonic() + 10
        while eng.docker("exec", cid, "cat", "/tmp/d", check=False).stdout != "detached\n":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ps = eng.docker("exec", cid, "ps", "-o", "pid,comm").stdout
        assert "sleep" in ps and "dockyard" not in ps  # exec lives inside the container's pid ns
    finally:
        eng.docker("rm", "-f", cid)


def test_restart_policies(eng):
    eng.docker(
        "run", "-d", *N, "--name", "onfail", "--restart", "on-failure:2", "busybox", "sh", "-c", "echo run; exit 1"
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = json.loads(eng.docker("inspect", "onfail").stdout)[0]
        if st["RestartCount"] == 2 and st["State"]["Status"] == "exited":
            break
        time.sleep(0.1)
    assert (st["RestartCount"], st["State"]["ExitCode"]) == (2, 1)
    assert eng.docker("logs", "onfail").stdout == "run\nrun\nrun\n"
    eng.docker("rm", "onfail")
    eng.docker("run", "-d", *N, "--name", "always", "--restart", "always", "busybox", "sh", "-c", "sleep 0.2")
    deadline = time.monotonic() + 20
    while json.loads(eng.docker("inspect", "always").stdout)[0]["RestartCount"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    eng.docker("stop", "always")
    time.sleep(0.5)
    assert eng.docker("inspect", "-f", "{{.State.Status}}", "always").stdout.strip() == "exited"
    eng.docker("rm", "always")


def test_wait_conditions_and_events(eng):
    since = str(int(time.time()) - 1)
    cid = eng.docker("create", *N, "busybox", "sh", "-c", "exit 6").stdout.strip()
    eng.docker("start", cid)
    assert eng.docker("wait", cid).stdout.strip() == "6"
    eng.docker("rm", cid)
    until = str(int(time.time()) + 1)
    out = eng.docker(
        "events", "--since", since, "--until", until, "--filter", "container=" + cid, "--format", "{{.Action}}"
    ).stdout.split()
    assert out[:2] == ["create", "start"] and "die" in out and out[-1] == "destroy"


def test_docker_py(eng):
    client = eng.client()
    assert client.containers.run("busybox", "echo py", network_mode="none", remove=True) == b"py\n"
    c = client.containers.run("busybox", "sleep 60", detach=True, network_mode="none", name="pyc")
    try:
        assert c.exec_run("echo hi") == (0, b"hi\n")
        code, out = c.exec_run(["sh", "-c", "echo err >&2; exit 2"])
        assert code == 2 and out == b"err\n"
        c.reload()
        assert c.status == "running" and c.attrs["HostConfig"]["LogConfig"]["Type"] == "json-file"
        assert [x.name for x in client.containers.list()] == ["pyc"]
        c.stop(timeout=1)
        assert c.wait()["StatusCode"] == 137
    finally:
        c.remove(force=True)
    import docker

    with pytest.raises(docker.errors.ContainerError) as exc:
        client.containers.run("busybox", ["sh", "-c", "echo boom >&2; exit 9"], network_mode="none", remove=True)
    assert exc.value.exit_status == 9 and b"boom" in exc.value.stderr


def test_live_restore_and_supervisor_loss(eng):
    eng.docker(
        "run",
        "-d",
        *N,
        "--name",
        "live",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo n$i; i=$((i+1)); sleep 0.1; done",
    )
    eng.docker("run", "-d", *N, "--name", "rebooted", "--restart", "always", "busybox", "sleep", "600")
    reboot_pid = json.loads(eng.docker("inspect", "rebooted").stdout)[0]["State"]["Pid"]
    log_path = _log_path(eng, "live")
    eng.stop()  # SIGTERM: the engine goes, containers stay
    before = open(log_path).read().count("\n")
    # What a host crash leaves: the supervisor (and with it the container) gone without a record.
    sup = _parent_of(reboot_pid)
    os.kill(sup, 9)
    time.sleep(0.5)
    assert open(log_path).read().count("\n") > before  # logs kept flowing
    eng.start()
    st = json.loads(eng.docker("inspect", "live").stdout)[0]["State"]
    assert st["Running"] is True
    n1 = eng.docker("logs", "live").stdout.count("\n")
    time.sleep(0.4)
    assert eng.docker("logs", "live").stdout.count("\n") > n1
    eng.docker("stop", "-t", "1", "live")
    assert eng.docker("inspect", "-f", "{{.State.ExitCode}}", "live").stdout.strip() == "137"
    # The lost one was recorded as exited 255 and its restart policy started it again.
    deadline = time.monotonic() + 20
    while True:
        st = json.loads(eng.docker("inspect", "rebooted").stdout)[0]
        if st["State"]["Running"] and st["State"]["Pid"] != reboot_pid:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    eng.docker("rm", "-f", "live", "rebooted")


def _log_path(eng, name):
    return json.loads(eng.docker("inspect", name).stdout)[0]["LogPath"]


def _parent_of(pid):
    with open("/proc/%d/stat" % pid) as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])
