"""engine/runtime/devicefilter.py: Docker's device allow-list as a cgroup v2 BPF program, attached
for real to a fresh cgroup on this host's unified hierarchy. A forked child moved into the cgroup
may mknod any device (Docker's "c/b *:* m") but opens only the listed ones: a block device (the
host's disk) and /dev/loop-control are refused with EPERM while /dev/null works. Each refusal is checked against a control
cgroup without the program, where the same opens succeed.
"""

import errno
import itertools
import json
import os
import stat
import struct
import time

import pytest

from dockyard.engine.runtime import cgroups, devicefilter


def unified_root():
    """Mount point of the cgroup2 hierarchy (/sys/fs/cgroup or the hybrid /sys/fs/cgroup/unified)."""
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup2":
                return fields[4]
    return None


ROOT = unified_root()
SKIP_REASON: "str | None"
if os.geteuid() != 0:
    SKIP_REASON = "cgroups and device nodes need root"
elif ROOT is None:
    SKIP_REASON = "no cgroup2 hierarchy mounted"
else:
    SKIP_REASON = devicefilter.unsupported_reason()  # None, or why the kernel cannot load the program
needs_kernel = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
_counter = itertools.count()


@pytest.fixture
def make_cgroup():
    """Factory of fresh cgroups under the unified root; all removed afterwards, also on failure."""
    made = []

    def make():
        path = os.path.join(ROOT, "dockyard-test-devices-%d-%d" % (os.getpid(), next(_counter)))
        os.mkdir(path)
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        with open(os.path.join(path, "cgroup.procs")) as fh:
            for pid in fh.read().split():
                try:
                    os.kill(int(pid), 9)  # only our own children can be in a cgroup we just made
                except ProcessLookupError:
                    pass
        for _ in range(50):
            try:
                os.rmdir(path)  # detaches its programs too
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.05)
        else:
            raise AssertionError("cgroup %s could not be removed" % path)


def host_disk():
    """(major, minor) of the block device holding / (the attack target: the host's disk)."""
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def run_in_cgroup(cgroup_dir, actions):
    """Fork a child, move it into `cgroup_dir`, then run {name: callable}; {name: 'ok' | 'EPERM' ...}."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(out_r)
            os.read(go_r, 1)
            results = {name: attempt(action) for name, action in actions.items()}
            os.write(out_w, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(out_w)
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))
        os.write(go_w, b"x")
        data = b""
        while True:
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(go_w)
        os.close(out_r)
        os.waitpid(pid, 0)
    return json.loads(data)


def node(directory, name, kind, major, minor):
    path = os.path.join(directory, name)

    def make():
        if os.path.lexists(path):
            os.unlink(path)
        os.mknod(path, 0o600 | kind, os.makedev(major, minor))

    return path, make


def opener(path, flags=os.O_RDONLY):
    return lambda: os.close(os.open(path, flags | os.O_CLOEXEC))


def probes(directory, block):
    disk, mk_disk = node(directory, "disk", stat.S_IFBLK, *block)
    ctl, mk_ctl = node(directory, "loop-control", stat.S_IFCHR, 10, 237)
    null, mk_null = node(directory, "null", stat.S_IFCHR, 1, 3)
    return {
        "mknod disk": mk_disk,
        "open disk": opener(disk),
        "mknod loop-control": mk_ctl,
        "open loop-control": opener(ctl),
        "mknod null": mk_null,
        "open null": opener(null, os.O_RDWR),
        "open /dev/null": opener("/dev/null", os.O_RDWR),
        "open /dev/zero": opener("/dev/zero"),
    }


@needs_kernel
def test_default_list_refuses_block_devices_and_allows_null(make_cgroup, tmp_path):
    # The host's disk is the real target; where even the host's root cannot open it (sandboxes),
    # loop0 stands in: the control run below has to open it, or the test proves nothing.
    control_dir = make_cgroup()
    for block in (host_disk(), (7, 0)):
        control = run_in_cgroup(control_dir, probes(str(tmp_path), block))
        if set(control.values()) == {"ok"}:
            break
    else:
        raise AssertionError("no block device opens even without the filter: %r" % control)
    confined = make_cgroup()
    devicefilter.attach(confined, cgroups.DEFAULT_DEVICE_RULES)
    results = run_in_cgroup(confined, probes(str(tmp_path), block))
    assert results == {
        "mknod disk": "ok",  # Docker allows mknod of any device ("b *:* m") ...
        "open disk": "EPERM",  # ... but not opening it
        "mknod loop-control": "ok",
        "open loop-control": "EPERM",
        "mknod null": "ok",
        "open null": "ok",
        "open /dev/null": "ok",
        "open /dev/zero": "ok",
    }


def attached_count(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return len(devicefilter.attached_program_ids(fd))
    finally:
        os.close(fd)


@needs_kernel
def test_container_cgroups_on_v2_get_the_program_unless_privileged(make_cgroup, tmp_path, monkeypatch):
    """Cgroup.create on cgroup v2 attaches Docker's list (the v1 devices.allow rules) for an
    unprivileged container, nothing for a privileged one; the container's view of the host disk."""
    monkeypatch.setattr(cgroups, "ROOT", ROOT)  # the hybrid layout's unified tree stands in for a v2 host
    parent = make_cgroup()
    unprivileged = cgroups.Cgroup("2", {"unified": os.path.join(parent, "c1")})
    privileged = cgroups.Cgroup("2", {"unified": os.path.join(parent, "c2")})
    unprivileged.create({}, privileged=False)
    privileged.create({}, privileged=True)
    try:
        assert attached_count(unprivileged.paths["unified"]) == 1
        assert attached_count(privileged.paths["unified"]) == 0
        block = host_disk()
        results = run_in_cgroup(unprivileged.paths["unified"], probes(str(tmp_path), block))
        assert results["open disk"] == "EPERM" and results["open null"] == "ok", results
    finally:
        for cg in (unprivileged, privileged):
            cg.kill_all()
            cg.remove()


def loop_probes():
    return {
        "read loop0": opener("/dev/loop0"),
        "write loop0": opener("/dev/loop0", os.O_WRONLY),
        "read loop1": opener("/dev/loop1"),
        "open /dev/null": opener("/dev/null", os.O_RDWR),
    }


@needs_kernel
def test_extra_devices_replace_and_detach(make_cgroup):
    if not (os.path.exists("/dev/loop0") and os.path.exists("/dev/loop1")):
        pytest.skip("no /dev/loop0 and /dev/loop1 on this host")
    path = make_cgroup()
    devicefilter.attach(path, cgroups.DEFAULT_DEVICE_RULES)
    assert run_in_cgroup(path, loop_probes()) == {
        "read loop0": "EPERM",
        "write loop0": "EPERM",
        "read loop1": "EPERM",
        "open /dev/null": "ok",
    }
    devicefilter.attach(path, cgroups.DEFAULT_DEVICE_RULES, extra=["b 7:0 r"])  # like --device .../loop0:r
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(devicefilter.attached_program_ids(fd)) == 1  # replaced, not stacked
    finally:
        os.close(fd)
    assert run_in_cgroup(path, loop_probes()) == {
        "read loop0": "ok",
        "write loop0": "EPERM",
        "read loop1": "EPERM",
        "open /dev/null": "ok",
    }
    assert devicefilter.detach_all(path) == 1
    assert set(run_in_cgroup(path, loop_probes()).values()) == {"ok"}


@needs_kernel
def test_verifier_errors_are_reported():
    exit_only = struct.pack("=BBhi", 0x95, 0, 0, 0)  # exit without setting R0
    with pytest.raises(devicefilter.BpfError) as info:
        devicefilter.load_program(exit_only)
    assert "R0 !read_ok" in info.value.log


def decode(program):
    return [struct.unpack_from("=BBhi", program, i) for i in range(0, len(program), 8)]


def test_assembled_blocks_jump_to_the_next_rule():
    insns = decode(devicefilter.assemble(["c 1:3 rwm"]))
    assert len(insns) == 6 + 5 + 2  # header, block (type, major, minor, allow, exit), deny
    block = insns[6:11]
    assert [i[0] for i in block] == [0x55, 0x55, 0x55, 0xB4, 0x95]
    assert [i[2] + n + 1 for n, i in enumerate(block[:3])] == [5, 5, 5]  # all land after the block
    assert [i[3] for i in block[:3]] == [2, 1, 3]  # char device, 1:3
    assert insns[-2] == (0xB4, 0, 0, 0)  # R0 = 0: deny
    access = decode(devicefilter.assemble(["b *:* m"]))[6:]
    assert [i[0] for i in access] == [0x55, 0xBC, 0x54, 0x5D, 0xB4, 0x95, 0xB4, 0x95]
    assert access[2][3] == 1  # BPF_DEVCG_ACC_MKNOD
    everything = decode(devicefilter.assemble(["c 1:3 rwm", "a", "c 5:0 rwm"]))
    assert everything[-2:] == [(0xB4, 0, 0, 1), (0x95, 0, 0, 0)]  # nothing after "allow all"


@pytest.mark.parametrize(
    "text, rule",
    [
        ("c 1:3 rwm", devicefilter.DeviceRule("c", 1, 3, "rwm")),
        ("c 136:* rwm", devicefilter.DeviceRule("c", 136, None, "rwm")),
        ("b *:* m", devicefilter.DeviceRule("b", None, None, "m")),
        ("a", devicefilter.DeviceRule("a", None, None, "rwm")),
    ],
)
def test_parse_rule(text, rule):
    assert devicefilter.parse_rule(text) == rule


@pytest.mark.parametrize("text", ["", "c 1:3", "x 1:3 rwm", "c 1 rwm", "c 1:3 rwx", "c a:3 r", "c 1:3 rr"])
def test_parse_rule_refuses(text):
    with pytest.raises(devicefilter.DeviceRuleError):
        devicefilter.parse_rule(text)


def test_numbers_beyond_the_filter_are_refused():
    with pytest.raises(devicefilter.DeviceRuleError):
        devicefilter.assemble(["c 1:2147483648 r"])
