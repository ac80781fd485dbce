"""Unit tests of the runtime's pure parts: signals, capabilities, create semantics, mounts, users,
detach keys, the json-file log, symlink-safe joins, cgroup file formats and status strings."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from dockyard.engine.errors import InvalidParameter
from dockyard.engine.runtime import (
    caps,
    cgroups,
    create,
    logs,
    process,
    procident,
    relay,
    rootpath,
    seccomp,
    spec,
    userdb,
    views,
)
from dockyard.engine.runtime.signals import SignalError, parse_signal


def test_signal_names_and_numbers():
    assert parse_signal("TERM") == signal.SIGTERM
    assert parse_signal("SIGKILL") == signal.SIGKILL
    assert parse_signal("hup") == signal.SIGHUP
    assert parse_signal("9") == 9
    assert parse_signal("RTMIN+3") == signal.SIGRTMIN + 3
    for bad in ("", "NOPE", "0", "999", "RTMIN+99"):
        with pytest.raises(SignalError):
            parse_signal(bad)


def test_default_capabilities_and_add_drop():
    default = caps.effective_set()
    assert set(default) == set(caps.DEFAULT)
    assert "SYS_ADMIN" not in default and "NET_RAW" in default
    dropped = caps.effective_set(cap_drop=["net_raw"], cap_add=["CAP_SYS_PTRACE"])
    assert "NET_RAW" not in dropped and "SYS_PTRACE" in dropped
    assert caps.effective_set(cap_drop=["ALL"], cap_add=["chown"]) == ["CHOWN"]
    assert "SYS_ADMIN" in caps.effective_set(cap_add=["ALL"])
    with pytest.raises(caps.CapabilityError):
        caps.effective_set(cap_add=["NOT_A_CAP"])
    assert caps.mask(["CHOWN", "KILL"]) == (1 << 0) | (1 << 5)


IMAGE = {
    "Entrypoint": ["/entry.sh"],
    "Cmd": ["serve"],
    "Env": ["PATH=/img/bin", "A=image"],
    "WorkingDir": "/srv",
    "User": "app",
    "Labels": {"l": "image"},
    "Volumes": {"/data": {}},
}


def test_entrypoint_and_cmd_follow_docker():
    cfg = create.merge_config({"Image": "x"}, IMAGE)
    assert create.command_of(cfg) == ("/entry.sh", ["serve"])
    cfg = create.merge_config({"Image": "x", "Cmd": ["other", "arg"]}, IMAGE)
    assert create.command_of(cfg) == ("/entry.sh", ["other", "arg"])
    # A user entrypoint drops the image's Cmd.
    cfg = create.merge_config({"Image": "x", "Entrypoint": ["/bin/sh"]}, IMAGE)
    assert create.command_of(cfg) == ("/bin/sh", [])
    cfg = create.merge_config({"Image": "x", "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"]}, IMAGE)
    assert create.command_of(cfg) == ("/bin/sh", ["-c", "true"])
    # --entrypoint "" clears the entrypoint; the command is the user's Cmd only.
    cfg = create.merge_config({"Image": "x", "Entrypoint": [""], "Cmd": ["ls"]}, IMAGE)
    assert create.command_of(cfg) == ("ls", [])
    with pytest.raises(InvalidParameter, match="No command specified"):
        create.command_of(create.merge_config({"Image": "x", "Entrypoint": [""]}, IMAGE))


def test_env_labels_and_defaults_merge():
    cfg = create.merge_config({"Image": "x", "Env": ["A=user", "B=2"], "Labels": {"u": "1"}}, IMAGE)
    assert cfg["Env"] == ["PATH=/img/bin", "A=user", "B=2"]
    assert cfg["Labels"] == {"l": "image", "u": "1"}
    assert cfg["WorkingDir"] == "/srv" and cfg["User"] == "app"
    bare = create.merge_config({"Image": "x", "Cmd": ["true"]}, {})
    assert bare["Env"][0].startswith("PATH=/usr/local/sbin")
    with pytest.raises(InvalidParameter):
        create.merge_config({"Image": "x", "Cmd": ["true"], "WorkingDir": "relative"}, {})


def test_host_config_normalisation():
    hc = create.normalize_host_config({"NetworkMode": "default", "LogConfig": {"Type": ""}})
    assert hc["NetworkMode"] == "bridge" and hc["LogConfig"] == {"Type": "json-file", "Config": {}}
    assert hc["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    with pytest.raises(InvalidParameter, match="--restart and --rm"):
        create.normalize_host_config({"AutoRemove": True, "RestartPolicy": {"Name": "always"}})
    with pytest.raises(InvalidParameter):
        create.normalize_host_config({"RestartPolicy": {"Name": "sometimes"}})
    with pytest.raises(InvalidParameter, match="Minimum memory"):
        create.normalize_host_config({"Memory": 1024})
    with pytest.raises(InvalidParameter):
        create.normalize_host_config({"LogConfig": {"Type": "syslog"}})
    assert create.no_new_privs({}) is True
    assert create.no_new_privs({"SecurityOpt": ["no-new-privileges=false"]}) is False


def test_mount_points_from_binds_mounts_tmpfs_and_image_volumes(tmp_path):
    hc = {
        "Binds": ["/srv/a:/a:ro", "named:/b", "/srv/c:/c:rw,rslave"],
        "Mounts": [
            {"Type": "bind", "Source": str(tmp_path), "Target": "/d", "ReadOnly": True},
            {"Type": "tmpfs", "Target": "/e", "TmpfsOptions": {"SizeBytes": 1048576}},
        ],
        "Tmpfs": {"/run": "size=64m"},
    }
    points = create.parse_mounts(hc, {"Volumes": {"/data": {}, "/a": {}}})
    by_dest = {p["Destination"]: p for p in points}
    assert by_dest["/a"]["Type"] == "bind" and by_dest["/a"]["RW"] is False
    assert by_dest["/b"]["Type"] == "volume" and by_dest["/b"]["Name"] == "named"
    assert by_dest["/c"]["Propagation"] == "rslave"
    assert by_dest["/d"]["RW"] is False and by_dest["/e"]["Mode"] == "size=1048576"
    assert by_dest["/run"]["Type"] == "tmpfs"
    assert by_dest["/data"]["Anonymous"] is True  # from the image's VOLUME
    assert sorted(by_dest) == ["/a", "/b", "/c", "/d", "/data", "/e", "/run"]  # /a not doubled
    with pytest.raises(InvalidParameter, match="Duplicate mount point"):
        create.parse_mounts({"Binds": ["/x:/same", "/y:/same"]}, {})
    with pytest.raises(InvalidParameter, match="bind source path does not exist"):
        create.parse_mounts({"Mounts": [{"Type": "bind", "Source": "/no/such/dir", "Target": "/t"}]}, {})


def test_user_resolution(tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "group").write_text("root:x:0:\napp:x:1001:\nextra:x:2000:app\n")
    kw = {"passwd": str(tmp_path / "passwd"), "group": str(tmp_path / "group")}
    assert userdb.resolve("", **kw) == (0, 0, [], "/root")
    assert userdb.resolve("app", **kw) == (1000, 1001, [2000], "/home/app")
    assert userdb.resolve("app:root", **kw) == (1000, 0, [], "/home/app")
    assert userdb.resolve("4242", **kw) == (4242, 0, [], "/")
    assert userdb.resolve("4242:77", ["extra"], **kw) == (4242, 77, [2000], "/")
    with pytest.raises(userdb.UserError, match="no matching entries in passwd"):
        userdb.resolve("ghost", **kw)
    with pytest.raises(userdb.UserError, match="no matching entries in group"):
        userdb.resolve("app:ghosts", **kw)


def test_detach_keys():
    assert relay.parse_detach_keys("") == b"\x10\x11"
    assert relay.parse_detach_keys("ctrl-a,x") == b"\x01x"
    with pytest.raises(relay.DetachKeyError):
        relay.parse_detach_keys("ctrl-")
    esc = relay.Escape(b"\x10\x11")
    assert esc.feed(b"ab\x10") == (b"ab", False)  # a partial match is held back
    assert esc.feed(b"c") == (b"\x10c", False)  # and released when it was not the sequence
    assert esc.feed(b"\x10\x11rest") == (b"", True)


def test_json_file_log_lines_partials_and_tail(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = logs.JsonLogWriter(path)
    w.write("stdout", b"one\ntw")
    w.write("stderr", b"err\n")
    w.write("stdout", b"o\nthree")
    w.close()  # flushes the partial "three"
    entries = logs.LogReader(path).poll()
    assert [(e.stream, e.data) for e in entries] == [
        ("stdout", b"one\n"),
        ("stderr", b"err\n"),
        ("stdout", b"two\n"),
        ("stdout", b"three"),
    ]
    first = json.loads(open(path).readline())
    assert set(first) == {"log", "stream", "time"} and first["time"].endswith("Z")
    assert logs.parse_time(first["time"]) == entries[0].nanos() > 0
    tail = logs.LogReader(path, logs.tail_offset(path, 2)).poll()
    assert [e.data for e in tail] == [b"two\n", b"three"]
    assert logs.LogReader(path, logs.tail_offset(path, 0)).poll() == []
    assert logs.parse_since("1700000000.5") == 1700000000500000000


def test_open_in_root_never_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "outside").mkdir()
    os.symlink("/etc/../../outside", root / "evil")
    os.symlink("../../..", root / "etc" / "up")

    def resolve(path, **kw):
        fd = rootpath.open_in_root(root_fd, path, **kw)
        try:
            return os.readlink(rootpath.proc_fd(fd))
        finally:
            os.close(fd)

    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert resolve("/evil") == str(root / "outside")
        assert resolve("/etc/up") == str(root)
        assert resolve("../../etc") == str(root / "etc")
        assert resolve("/evil/deep/file", create="file") == str(root / "outside" / "deep" / "file")
        assert (root / "outside" / "deep" / "file").is_file()
        with pytest.raises(OSError):
            resolve("/evil", follow=False)
    finally:
        os.close(root_fd)


def test_cgroup_layout_detection(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "33 30 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    lay = cgroups.Layout.detect(mountinfo=str(info))
    assert lay.version == "1" and lay.v1["cpu"] == lay.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    cg = cgroups.Cgroup.for_container("dockyard", "abc", lay)
    assert cg.paths["memory"] == "/sys/fs/cgroup/memory/dockyard/abc"
    assert len(cg.dirs()) == 2  # cpu and cpuacct share one directory
    info.write_text("40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    lay2 = cgroups.Layout.detect(mountinfo=str(info))
    assert lay2.version == "2" and cgroups.Cgroup.for_container("p", "x", lay2).paths == {
        "unified": "/sys/fs/cgroup/p/x"
    }


def test_cgroup_v2_limit_files(tmp_path):
    """The v2 writers, on a plain directory standing in for a cgroup (this machine is v1)."""
    d = tmp_path / "cg"
    d.mkdir()
    for name in ("memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max"):
        (d / name).write_text("")
    cg = cgroups.Cgroup("2", {"unified": str(d)})
    cg.set_resources({"Memory": 64 << 20, "NanoCpus": 500000000, "CpuShares": 512, "PidsLimit": 20})
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "memory.swap.max").read_text() == str(64 << 20)  # Docker: swap = memory by default
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "cpu.weight").read_text() == str(1 + (510 * 9999) // 262142)
    assert (d / "pids.max").read_text() == "20"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.current").write_text("4096\n")
    stats = cg.stats()
    assert stats["cpu_total_ns"] == 1500000 and stats["memory_usage"] == 4096


def test_human_status_strings():
    assert views.human_duration(0.2) == "Less than a second"
    assert views.human_duration(5) == "5 seconds"
    assert views.human_duration(61) == "About a minute"
    assert views.human_duration(300) == "5 minutes"
    assert views.human_duration(3600) == "About an hour"
    assert views.human_duration(3 * 86400) == "3 days"


def test_security_opt_parsing_follows_dockerd():
    opts = create.security_options
    assert opts(None) == {"no_new_privs": True, "seccomp": "default", "seccomp_explicit": False}
    assert opts(["no-new-privileges"])["no_new_privs"] is True
    assert opts(["no-new-privileges=false"])["no_new_privs"] is False
    assert opts(["no-new-privileges:F"])["no_new_privs"] is False  # the deprecated ':' form, Go's ParseBool
    assert opts(["seccomp=unconfined"])["seccomp"] == "unconfined"
    assert opts(["seccomp=builtin"]) == {"no_new_privs": True, "seccomp": "default", "seccomp_explicit": True}
    profile = opts(['seccomp={"defaultAction": "SCMP_ACT_ERRNO"}'])["seccomp"]
    assert profile == {"defaultAction": "SCMP_ACT_ERRNO"}
    assert opts(["apparmor=unconfined", "label=disable", "disable"])["seccomp"] == "default"
    for bad, message in (
        ("apparmor=docker-default", "no AppArmor support"),
        ("label=level:s0", "no SELinux labeling support"),
        ("label:user:x", "no SELinux labeling support"),
        ("selinux=x", 'invalid --security-opt 2: "selinux=x"'),
        ("bare", 'invalid --security-opt 1: "bare"'),
        ("no-new-privileges=yes", 'invalid --security-opt 2: "no-new-privileges=yes"'),
        ("seccomp=/etc/profile.json", "Decoding seccomp profile failed"),  # a path never reaches the daemon
        ('seccomp={"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY"),
    ):
        with pytest.raises(InvalidParameter, match=re.escape(message)):
            opts([bad])
    with pytest.raises(InvalidParameter, match="invalid --security-opt"):
        create.normalize_host_config({"SecurityOpt": ["apparmor"]})


def test_explicit_seccomp_is_refused_without_libseccomp(monkeypatch):
    monkeypatch.setattr(seccomp, "available", lambda: False)
    assert create.security_options(["seccomp=unconfined"])["seccomp"] == "unconfined"
    assert create.security_options([])["seccomp"] == "default"  # runs unconfined; /info warns
    for opt in ("seccomp=builtin", 'seccomp={"defaultAction": "SCMP_ACT_ALLOW"}'):
        with pytest.raises(InvalidParameter, match=re.escape(create.SECCOMP_UNAVAILABLE)):
            create.security_options([opt])


@pytest.mark.skipif(not seccomp.available(), reason="needs libseccomp")
def test_seccomp_filter_choice():
    assert spec.seccomp_filter({}) is not None
    assert spec.seccomp_filter({"SecurityOpt": ["seccomp=unconfined"]}) is None
    assert spec.seccomp_filter({"Privileged": True}) is None  # dockerd: privileged runs unconfined
    assert spec.seccomp_filter({"Privileged": True, "SecurityOpt": ["seccomp=builtin"]}) is not None
    # Capabilities change the program: CAP_SYS_ADMIN opens mount/unshare/setns ... as in Docker's profile.
    assert spec.seccomp_filter({"CapAdd": ["SYS_ADMIN"]}) != spec.seccomp_filter({})
    allow_all = json.dumps({"defaultAction": "SCMP_ACT_ALLOW"})
    assert spec.seccomp_filter({"SecurityOpt": ["seccomp=" + allow_all]}) is not None
    assert spec.seccomp_filter({"SecurityOpt": ["seccomp={}"]}) is None  # an empty profile confines nothing


def _fork(body):
    """Run body() in a child; its return value (an int < 256) is the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def _status(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_pid_start_time_guard_catches_reuse_and_exit():
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = procident.start_time(child.pid)
        with procident.Pinned(child.pid, started) as pinned:
            pinned.check()
        assert procident.is_running(child.pid, started)
        assert procident.is_running(child.pid, None)
        # The same PID with another start time: what a recycled PID looks like.
        with pytest.raises(procident.ProcessGone, match="PID reused"):
            procident.Pinned(child.pid, started + 1).open()
        pinned = procident.Pinned(child.pid, started).open()
        child.kill()
        time.sleep(0.1)  # not reaped yet: a zombie has exited all the same
        with pytest.raises(procident.ProcessGone):
            pinned.check()
        pinned.close()
        assert not procident.is_running(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert not procident.is_running(child.pid, started)
    assert not procident.is_running(0, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="changes capabilities")
def test_container_processes_get_no_inheritable_or_ambient_capabilities():
    def body():
        caps.drop_bounding(caps.mask(caps.DEFAULT))
        caps.apply(caps.mask(caps.DEFAULT))
        with open("/proc/self/status") as fh:
            st = dict(line.split(":\t", 1) for line in fh if line.startswith("Cap"))
        ok = int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        return 0 if ok and int(st["CapEff"], 16) == caps.mask(caps.DEFAULT) else 1

    assert _status(_fork(body)) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="changes capabilities")
@pytest.mark.parametrize("undumpable", [True, False])
def test_an_undumpable_process_hides_its_exe_from_a_peer_with_the_same_capabilities(undumpable):
    """What execproc/containerinit do before they are visible in the container's PID namespace:
    a root process holding the container's capabilities cannot reach /proc/<pid>/exe of the
    (still host python) process, as long as it lacks CAP_SYS_PTRACE."""
    mask = caps.mask(caps.DEFAULT)
    hold_r, hold_w = os.pipe()

    def target():
        if undumpable:
            process.make_undumpable()
        caps.drop_bounding(mask)
        caps.apply(mask)
        os.close(hold_w)
        os.read(hold_r, 1)
        return 0

    tpid = _fork(target)
    os.close(hold_r)

    def peer():
        caps.drop_bounding(mask)
        caps.apply(mask)
        time.sleep(0.2)
        try:
            os.readlink("/proc/%d/exe" % tpid)
        except PermissionError:
            return 13
        return 0

    try:
        assert _status(_fork(peer)) == (13 if undumpable else 0)
    finally:
        os.close(hold_w)
        assert _status(tpid) == 0


def test_info_lists_seccomp_only_when_enforced(monkeypatch):
    from dockyard.engine.api import system

    monkeypatch.setattr(seccomp, "available", lambda: False)
    assert "name=seccomp,profile=builtin" not in system.security_options()
    monkeypatch.setattr(seccomp, "available", lambda: True)
    assert system.security_options()[0] == "name=seccomp,profile=builtin"
