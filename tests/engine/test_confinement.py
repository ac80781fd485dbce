"""Confinement of real containers, run through a real engine: Docker's default seccomp profile and
--security-opt, empty inheritable/ambient capabilities, no way from a container to the host's python
binary through an exec (CVE-2019-5736), and exec pinned to the container's init (409 once it is gone).

Escape attempts run a small static C program (data/confine_probe.c, built here with gcc) mounted
read-only into the container; each prints the errno it got.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dockyard.engine.runtime import seccomp

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="the probe is built with gcc"),
    pytest.mark.skipif(not seccomp.available(), reason=str(seccomp.unavailable_reason())),
]

N = ("--network", "none")
PROBE_SRC = Path(__file__).parent / "data" / "confine_probe.c"


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out / "probe"), str(PROBE_SRC)], check=True)
    return out


def host_block_device():
    """(major, minor) of a block device of this host (its first disk)."""
    for line in Path("/proc/partitions").read_text().splitlines()[2:]:
        major, minor, _blocks, _name = line.split()
        return int(major), int(minor)
    pytest.skip("no block device on this host")


def probe_run(eng, probe_dir, script, *opts, check=True):
    p = eng.docker("run", "--rm", *N, "-v", f"{probe_dir}:/probe:ro", *opts, "busybox", "sh", "-c", script, check=check)
    return dict(line.split(" ", 1) for line in p.stdout.splitlines() if " " in line)


def status_fields(text):
    return dict(re.findall(r"^(\w+):\s+(\S+)$", text, re.M))


def host_python():
    return os.path.realpath(sys.executable)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


ESCAPES = (
    "/probe/probe unshare-user; /probe/probe keyctl; /probe/probe add-key; /probe/probe bpf; "
    "/probe/probe mount; mknod /dev/disk b {major} {minor} && /probe/probe read-dev /dev/disk; "
    "grep -E '^(Seccomp|CapInh|CapAmb|NoNewPrivs):' /proc/self/status | tr -d '\\t' | tr ':' ' '"
)


def test_default_profile_refuses_escapes(eng, probe_dir):
    major, minor = host_block_device()
    out = probe_run(eng, probe_dir, ESCAPES.format(major=major, minor=minor))
    assert out["Seccomp"] == "2"  # filter mode
    assert (out["CapInh"], out["CapAmb"]) == ("0000000000000000", "0000000000000000")
    for op in ("unshare-user", "keyctl", "add-key", "bpf", "mount"):
        assert out[op] == "EPERM", (op, out)
    assert out["read-dev"] in ("EACCES", "EPERM"), out  # /dev is nodev; the device allow-list behind it
    assert eng.docker("version").returncode == 0


def test_device_allow_list_holds_with_sys_admin(eng, probe_dir):
    """CAP_SYS_ADMIN lets the container mount a tmpfs that allows device nodes: the device
    allow-list (cgroup v1 here; the BPF program on cgroup v2, tests/integration/test_cgroup2_devices.py)
    is what refuses the host's disk."""
    major, minor = host_block_device()
    script = (
        f"mkdir /tmp/m && mount -t tmpfs x /tmp/m && mknod /tmp/m/disk b {major} {minor} && "
        "/probe/probe read-dev /tmp/m/disk; mknod /tmp/m/null c 1 3 && /probe/probe read-dev /tmp/m/null"
    )
    lines = eng.docker(
        "run", "--rm", *N, "-v", f"{probe_dir}:/probe:ro", "--cap-add", "SYS_ADMIN", "busybox", "sh", "-c", script
    ).stdout.splitlines()
    assert lines == ["read-dev EPERM", "read-dev ok"], lines


def test_unconfined_lifts_the_seccomp_refusals_only(eng, probe_dir):
    major, minor = host_block_device()
    out = probe_run(eng, probe_dir, ESCAPES.format(major=major, minor=minor), "--security-opt", "seccomp=unconfined")
    assert out["Seccomp"] == "0"
    assert out["keyctl"] == "ok" and out["add-key"] == "ok"
    assert out["unshare-user"] == "ok"
    # What capabilities, the device list and the inheritable set refuse stays refused.
    assert out["mount"] == "EPERM" and out["read-dev"] in ("EACCES", "EPERM")
    assert (out["CapInh"], out["CapAmb"]) == ("0000000000000000", "0000000000000000")


def test_privileged_runs_unconfined_unless_a_profile_is_given(eng, probe_dir):
    out = probe_run(eng, probe_dir, "grep Seccomp: /proc/self/status | tr -d '\\t' | tr ':' ' '", "--privileged")
    assert out["Seccomp"] == "0"
    out = probe_run(
        eng,
        probe_dir,
        "/probe/probe keyctl",
        "--privileged",
        "--security-opt",
        "seccomp=builtin",
    )
    assert out["keyctl"] == "EPERM"


def test_custom_profile(eng, probe_dir, tmp_path):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    # The docker CLI reads the file and sends its content.
    out = probe_run(
        eng,
        probe_dir,
        "mkdir /tmp/x 2>/dev/null; echo mkdir $?; /probe/probe keyctl",
        "--security-opt",
        f"seccomp={path}",
    )
    assert out == {"mkdir": "1", "keyctl": "ok"}, out


@pytest.mark.parametrize(
    "opt, message",
    [
        ("apparmor=docker-default", "dockyard has no AppArmor support"),
        ("label=type:svirt_lxc_net_t", "dockyard has no SELinux labeling support"),
        ("seccomp-ish=1", 'invalid --security-opt 2: "seccomp-ish=1"'),
        ("nonsense", 'invalid --security-opt 1: "nonsense"'),
        ("no-new-privileges=maybe", 'invalid --security-opt 2: "no-new-privileges=maybe"'),
        ('seccomp={"defaultAction": "SCMP_ACT_BOGUS"}', "unknown seccomp action"),
        ('seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"]', "Decoding seccomp profile failed"),
        ('seccomp={"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY is not supported"),
    ],
)
def test_bad_security_opts_are_400s(eng, opt, message):
    import docker.errors

    client = eng.client()
    before = set(eng.docker("ps", "-aq").stdout.split())
    with pytest.raises(docker.errors.APIError) as err:
        client.api.create_container("busybox", "true", host_config=client.api.create_host_config(security_opt=[opt]))
    assert err.value.status_code == 400 and message in err.value.explanation, err.value.explanation
    assert set(eng.docker("ps", "-aq").stdout.split()) == before  # nothing created
    assert client.ping()


def test_accepted_opt_outs(eng):
    p = eng.docker(
        "run",
        "--rm",
        *N,
        "--security-opt",
        "apparmor=unconfined",
        "--security-opt",
        "label=disable",
        "--security-opt",
        "no-new-privileges=false",
        "busybox",
        "grep",
        "-E",
        "^(NoNewPrivs|Seccomp):",
        "/proc/self/status",
    )
    # Without no_new_privs the filter goes in before the capabilities are dropped: still there.
    assert p.stdout.split() == ["NoNewPrivs:", "0", "Seccomp:", "2"]


def test_exec_gets_the_containers_filter_and_no_inheritable_caps(eng):
    cid = eng.docker("run", "-d", *N, "--cap-add", "SYS_PTRACE", "busybox", "sleep", "60").stdout.strip()
    try:
        for user in ("0", "65534"):
            for priv in ((), ("--privileged",)):
                text = eng.docker("exec", *priv, "-u", user, cid, "cat", "/proc/self/status").stdout
                st = status_fields(text)
                assert st["Seccomp"] == "2", (user, priv)  # the container's filter, also for --privileged
                assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0, (user, priv, st)
                if user != "0":
                    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    finally:
        eng.docker("rm", "-f", cid)


def test_ptrace_and_exe_of_host_processes_fail(eng, probe_dir):
    engine_pid = int((eng.dir / "engine.pid").read_text())
    digest = sha256(host_python())
    out = probe_run(
        eng,
        probe_dir,
        f"/probe/probe ptrace {engine_pid}; /probe/probe open-exe {engine_pid}; "
        f"/probe/probe write-via-fd /proc/{engine_pid}/exe",
        "--pid",
        "host",
    )
    assert out["ptrace"] == "EPERM"
    assert out["open-exe"] in ("EACCES", "EPERM")
    assert out.get("open-path") in ("EACCES", "EPERM"), out
    assert sha256(host_python()) == digest


def _exec_window_attempt(eng, probe_dir, *opts):
    """Hold an exec before its execve, while it is still the host's python inside the container's
    PID namespace (for -u nobody it has to read /etc/passwd, a FIFO here), and attack it from the
    container's own process: /proc/<pid>/exe for writing, and O_PATH reopened through /proc/self/fd.
    Then feed the FIFO (the user lookup reads it more than once) and let the exec finish."""
    script = (
        "cp /etc/passwd /passwd.real && rm /etc/passwd && mkfifo /etc/passwd && echo ready; "
        "for i in $(seq 300); do for d in /proc/[0-9]*; do "
        '  if [ "$(cat $d/comm 2>/dev/null)" = dockyard-exec ]; then p=${d#/proc/}; break 2; fi; '
        "done; sleep 0.1; done; echo pid $p; "
        "readlink /proc/$p/exe >/dev/null 2>&1; echo readlink $?; "
        "/probe/probe open-exe $p; /probe/probe write-via-fd /proc/$p/exe; "
        "(while :; do cat /passwd.real > /etc/passwd; done) & echo done; sleep 60"
    )
    cid = eng.docker(
        "run", "-d", *N, "-v", f"{probe_dir}:/probe:ro", *opts, "busybox", "sh", "-c", script
    ).stdout.strip()  # fmt: skip
    try:
        for _ in range(100):
            if "ready" in eng.docker("logs", cid).stdout:
                break
            time.sleep(0.1)
        held = eng.docker("exec", "-u", "nobody", cid, "id", "-u", timeout=60)
        assert held.stdout == "65534\n"  # the exec went on once released
        for _ in range(100):
            logs = eng.docker("logs", cid).stdout
            if "done" in logs:
                break
            time.sleep(0.1)
        return dict(line.split(" ", 1) for line in logs.splitlines() if " " in line)
    finally:
        eng.docker("rm", "-f", cid)


def test_exec_never_exposes_the_host_python_binary(eng, probe_dir):
    digest = sha256(host_python())
    out = _exec_window_attempt(eng, probe_dir)
    assert out["pid"].isdigit(), out  # the exec's process was found, waiting in the container
    assert out["readlink"] != "0"
    assert out["open-exe"] in ("EACCES", "EPERM")
    assert out["open-path"] in ("EACCES", "EPERM"), out
    # With CAP_SYS_PTRACE the link can be opened: writing is still refused (the engine runs that binary).
    out = _exec_window_attempt(eng, probe_dir, "--cap-add", "SYS_PTRACE")
    assert out["open-exe"] in ("EACCES", "EPERM", "ETXTBSY"), out
    assert out.get("write-via-fd", out.get("open-path")) in ("EACCES", "EPERM", "ETXTBSY"), out
    assert sha256(host_python()) == digest


def _init_pid(eng, cid):
    return int(eng.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)


def test_exec_after_the_init_exited_is_409(eng):
    import docker.errors

    client = eng.client()
    cid = eng.docker("run", "-d", *N, "busybox", "sleep", "60").stdout.strip()
    try:
        os.kill(_init_pid(eng, cid), signal.SIGKILL)
        with pytest.raises(docker.errors.APIError) as err:
            for _ in range(50):  # until the engine has seen it die
                client.api.exec_create(cid, ["true"])
                time.sleep(0.1)
        assert err.value.status_code == 409
    finally:
        eng.docker("rm", "-f", cid)


def test_exec_while_the_engine_has_not_seen_the_init_die_is_409(eng):
    """The supervisor is stopped, so the dead init stays unreaped and the engine's state says
    running: the exec is refused by the pinned identity, not by the stale state."""
    import docker.errors

    client = eng.client()
    cid = eng.docker("run", "-d", *N, "busybox", "sh", "-c", "echo inside > /marker; exec sleep 60").stdout.strip()
    for _ in range(50):
        if eng.docker("exec", cid, "cat", "/marker", check=False).stdout == "inside\n":
            break
        time.sleep(0.1)
    pid = _init_pid(eng, cid)
    stat = Path(f"/proc/{pid}/stat").read_text()
    supervisor = int(stat[stat.rindex(")") + 2 :].split()[1])
    created = client.api.exec_create(cid, ["touch", "/ran"])["Id"]  # while the init still runs
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert eng.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
        with pytest.raises(docker.errors.APIError) as err:
            client.api.exec_create(cid, ["true"])
        assert err.value.status_code == 409
        with pytest.raises(docker.errors.APIError) as err:
            client.api.exec_start(created, detach=True)
        assert err.value.status_code == 409
        assert not os.path.exists("/ran")  # nothing ran on the host either
        # docker cp does not go through the dead init's /proc/<pid>/root either: the container's own files.
        p = eng.docker("cp", f"{cid}:/marker", "-")
        assert "inside\n" in p.stdout and p.stdout.startswith("marker")
    finally:
        os.kill(supervisor, signal.SIGCONT)
        eng.docker("rm", "-f", cid)
    assert client.ping()


def test_seccomp_is_listed_in_info_only_when_enforced(eng):
    info = json.loads(eng.docker("info", "--format", "{{json .}}").stdout)
    assert info["SecurityOptions"][:2] == ["name=seccomp,profile=builtin", "name=no-new-privileges"]
    assert not any("seccomp" in w for w in info.get("Warnings") or [])
