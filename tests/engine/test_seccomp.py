"""engine/runtime/seccomp.py: Docker's default profile loaded with libseccomp in a forked child
refuses what Docker refuses (EPERM) and lets ordinary programs run; capabilities open rules as the
profile says; custom profiles work; malformed ones are refused with a message fit for a 400.

Each probe is a raw syscall (ctypes, x86_64 numbers). Every refusal is checked against a control
child without the filter, so a probe that would fail anyway cannot pass for a seccomp refusal.
"""

import ctypes
import errno
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dockyard.engine.runtime import caps, seccomp

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers below are x86_64's"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading filters and dropping caps in children needs root"),
    pytest.mark.skipif(not seccomp.available(), reason="seccomp unavailable: %s" % seccomp.unavailable_reason()),
]

SIGCHLD = 17
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
PTRACE_ATTACH = 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def sys_call(number, *args):
    """(return value, errno) of a raw syscall."""
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    return ret, (ctypes.get_errno() if ret == -1 else 0)


def raw_clone(flags):
    """clone(2) without CLONE_VM: like fork; the new process exits at once."""
    ret, err = sys_call(56, flags | SIGCHLD, 0, 0, 0, 0)
    if ret == 0:
        os._exit(0)
    if ret > 0:
        os.waitpid(ret, 0)
        return 0, 0
    return ret, err


# name -> callable returning (ret, errno); arguments are harmless (NULL pointers, bad fds) where possible.
REFUSED_BY_DEFAULT = {
    "unshare(CLONE_NEWUSER)": lambda: sys_call(272, CLONE_NEWUSER),
    "clone(CLONE_NEWUSER)": lambda: raw_clone(CLONE_NEWUSER),
    "keyctl": lambda: sys_call(250, 0, -3, 0, 0, 0),  # KEYCTL_GET_KEYRING_ID, session keyring
    "add_key": lambda: sys_call(248, 0, 0, 0, 0, 0),
    "request_key": lambda: sys_call(249, 0, 0, 0, 0),
    "bpf": lambda: sys_call(321, 0, 0, 0),
    "perf_event_open": lambda: sys_call(298, 0, 0, -1, -1, 0),
    "userfaultfd": lambda: sys_call(323, 0),
    "io_uring_setup": lambda: sys_call(425, 0, 0),
    "open_by_handle_at": lambda: sys_call(304, -1, 0, 0),
    "kexec_load": lambda: sys_call(246, 0, 0, 0, 0),
    "init_module": lambda: sys_call(175, 0, 0, 0),
    "finit_module": lambda: sys_call(313, -1, 0, 0),
    "mount": lambda: sys_call(165, 0, 0, 0, 0, 0),
    "socket(AF_VSOCK)": lambda: sys_call(41, 40, 1, 0),
}


def run_in_child(setup, probes, isolate=True):
    """Fork; in the child run setup() then every probe (each in a process of its own with
    isolate=True, so one probe's effects, such as a new user namespace, cannot change the next's).
    Returns ({name: [ret, errno]}, the child's wait status)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            setup()
            results = {}
            for name, probe in probes.items():
                results[name] = run_isolated(probe) if isolate else list(probe())
            os.write(write_fd, json.dumps(results).encode())
            os._exit(0)
        except BaseException as exc:
            try:
                os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
            finally:
                os._exit(3)
    os.close(write_fd)
    data = read_all(read_fd)
    _, status = os.waitpid(pid, 0)
    results = json.loads(data or b"{}")
    assert "error" not in results, results
    return results, status


def run_isolated(probe):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_fd, json.dumps(list(probe())).encode())
        os._exit(0)
    os.close(write_fd)
    data = read_all(read_fd)
    os.waitpid(pid, 0)
    return json.loads(data)


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def load_default(capabilities):
    def setup():
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as a container's init
        assert seccomp.load(seccomp.default_profile(), capabilities)

    return setup


def thread_runs():
    box = []
    worker = threading.Thread(target=lambda: box.append(os.getpid()))
    worker.start()
    worker.join()
    return (0, 0) if box else (-1, -1)


def tcp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    return 0, 0


ALLOWED = {
    "write": lambda: sys_call(1, 2, 0, 0),  # write(2, NULL, 0)
    "thread": thread_runs,
    "socket(AF_INET)": tcp_socket,
    "personality(query)": lambda: (0, sys_call(135, 0xFFFFFFFF)[1]),
}


def test_default_profile_refuses_docker_list_and_runs_ordinary_syscalls():
    control, _ = run_in_child(lambda: None, REFUSED_BY_DEFAULT)
    assert all(err != errno.EPERM for _, err in control.values()), control  # each probe can fail
    results, status = run_in_child(load_default(caps.DEFAULT), {**REFUSED_BY_DEFAULT, **ALLOWED})
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    for name in REFUSED_BY_DEFAULT:
        assert results[name] == [-1, errno.EPERM], (name, results[name])
    for name in ALLOWED:
        assert results[name] == [0, 0], (name, results[name])


def test_clone3_is_enosys_so_libc_falls_back_to_clone():
    results, _ = run_in_child(load_default(caps.DEFAULT), {"clone3": lambda: sys_call(435, 0, 0)})
    assert results["clone3"] == [-1, errno.ENOSYS]


def test_cap_sys_admin_opens_clone_unshare_and_mount():
    probes = {
        "unshare(CLONE_NEWUTS)": lambda: sys_call(272, CLONE_NEWUTS),
        "clone(CLONE_NEWUTS)": lambda: raw_clone(CLONE_NEWUTS),
        "mount": lambda: sys_call(165, 0, 0, 0, 0, 0),
        "clone3": lambda: sys_call(435, 0, 0),
    }
    refused, _ = run_in_child(load_default(caps.DEFAULT), probes)
    assert all(v == [-1, errno.EPERM] for k, v in refused.items() if k != "clone3"), refused
    opened, _ = run_in_child(load_default(list(caps.DEFAULT) + ["SYS_ADMIN"]), probes)
    assert opened["unshare(CLONE_NEWUTS)"] == [0, 0]
    assert opened["clone(CLONE_NEWUTS)"] == [0, 0]
    assert opened["mount"][1] not in (0, errno.EPERM)  # reaches the kernel, which rejects NULLs
    assert opened["clone3"][1] not in (errno.ENOSYS, errno.EPERM)


def test_ptrace_of_a_host_process_fails():
    """Docker's profile allows ptrace on kernels >= 4.8; the refusal comes from the capability set
    (no CAP_SYS_PTRACE) under the filter, which this checks together, against an unconfined control."""
    target = os.fork()
    if target == 0:
        while True:
            time.sleep(60)
    try:

        def confined():
            load_default(caps.DEFAULT)()
            caps.apply(caps.mask(caps.DEFAULT))

        probe = {"ptrace": lambda: sys_call(101, PTRACE_ATTACH, target, 0, 0)}
        control, _ = run_in_child(lambda: None, probe)
        assert control["ptrace"] == [0, 0]  # attaching is possible without confinement
        results, _ = run_in_child(confined, probe)
        assert results["ptrace"] == [-1, errno.EPERM]
    finally:
        os.kill(target, signal.SIGKILL)
        os.waitpid(target, 0)


# What CPython needs to write a result and exit once the filter is in place.
_PYTHON_MINIMUM = ["write", "exit", "exit_group", "brk", "mmap", "munmap", "mprotect", "madvise", "futex"]
_PYTHON_MINIMUM += ["rt_sigprocmask", "rt_sigaction", "getpid", "close", "fstat", "newfstatat", "lseek"]


def test_custom_profile_with_small_allow_list():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EACCES,
        "syscalls": [
            {"names": _PYTHON_MINIMUM, "action": "SCMP_ACT_ALLOW"},
            {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}],
            },
            {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
        ],
    }
    seccomp.validate_profile(profile)
    probes = {
        "getpid": lambda: (0, sys_call(39)[1]),
        "getppid": lambda: sys_call(110),
        "uname": lambda: sys_call(63, 0),
        "personality(query)": lambda: (0, sys_call(135, 0xFFFFFFFF)[1]),
        "personality(set)": lambda: sys_call(135, 0x0008),
    }
    results, status = run_in_child(lambda: seccomp.load(profile, []), probes, isolate=False)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert results == {
        "getpid": [0, 0],
        "getppid": [-1, errno.EACCES],
        "uname": [-1, errno.ENOSYS],
        "personality(query)": [0, 0],
        "personality(set)": [-1, errno.EACCES],
    }


def test_kill_process_action():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    _, status = run_in_child(lambda: seccomp.load(profile, []), {"getppid": lambda: sys_call(110)}, isolate=False)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_exported_bpf_installs_without_libseccomp_in_the_child():
    program = seccomp.compile_bpf(seccomp.default_profile(), caps.DEFAULT)
    assert program and len(program) % 8 == 0

    def setup():
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
        seccomp.install_bpf(program)

    results, _ = run_in_child(setup, {"keyctl": REFUSED_BY_DEFAULT["keyctl"], "write": ALLOWED["write"]})
    assert results == {"keyctl": [-1, errno.EPERM], "write": [0, 0]}


def test_resolve_follows_caps_arches_and_kernel():
    profile = seccomp.default_profile()

    def names(rules):
        return {n for r in rules["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}

    plain = seccomp.resolve(profile, caps.DEFAULT, "amd64", (6, 1))
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert {"arch_prctl", "ptrace", "chroot"} <= names(plain)
    assert not {"mount", "unshare", "bpf", "keyctl", "add_key", "kexec_load", "open_by_handle_at"} & names(plain)
    assert "ptrace" not in names(seccomp.resolve(profile, caps.DEFAULT, "amd64", (4, 7)))
    admin = seccomp.resolve(profile, ["CAP_SYS_ADMIN"], "amd64", (6, 1))
    assert {"mount", "unshare", "setns"} <= names(admin)
    assert "chroot" not in names(admin)  # CAP_SYS_CHROOT not held
    arm = seccomp.resolve(profile, caps.DEFAULT, "arm64", (6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" not in names(arm) and "set_tls" in names(arm)
    assert seccomp.resolve({}, caps.DEFAULT) is None  # an empty profile confines nothing, as Docker's


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "Decoding seccomp profile failed"),
        ("[]", "must be a JSON object"),
        ('{"defaultAction": "SCMP_ACT_MAYBE"}', "unknown seccomp action 'SCMP_ACT_MAYBE'"),
        ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY is not supported"),
        ('{"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}', "'defaultAction' is required"),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "read", "names": ["write"],'
            ' "action": "SCMP_ACT_ALLOW"}]}',
            "both 'name' and 'names'",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
            ' "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
            "args.index: expected an integer from 0 to 5",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
            ' "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}',
            "unknown comparison operator 'SCMP_CMP_LIKE'",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
            ' "includes": {"minKernel": "five"}}]}',
            "invalid kernel version",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86"],'
            ' "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}',
            "both 'architectures' and 'archMap'",
        ),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "1"}', "defaultErrnoRet: expected an integer"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_NEW"]}', "unsupported flag"),
    ],
)
def test_malformed_profiles_are_refused(text, message):
    with pytest.raises(seccomp.ProfileError) as info:
        seccomp.parse_profile(text)
    assert message in str(info.value)


def test_default_profile_is_valid_and_docker_s():
    profile = seccomp.parse_profile(json.dumps(seccomp.default_profile()))
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == errno.EPERM
    assert seccomp.libseccomp_version() >= (2, 4, 0)


def test_real_programs_under_the_exported_filter():
    """The hook the container init will use: no_new_privs, install_bpf, then execve of the image's program."""
    program = seccomp.compile_bpf(seccomp.default_profile(), caps.DEFAULT)
    assert program is not None

    def confine():
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
        seccomp.install_bpf(program)

    script = (
        "import socket, threading; t = threading.Thread(target=print); t.start(); t.join(); socket.socket().close()"
    )
    ok = subprocess.run(["python3", "-c", script + "; print('fine')"], preexec_fn=confine, capture_output=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, b"fine"), ok.stderr
    refused = subprocess.run(["unshare", "--user", "true"], preexec_fn=confine, capture_output=True)
    assert refused.returncode != 0 and b"Operation not permitted" in refused.stderr, refused
    control = subprocess.run(["unshare", "--user", "true"], capture_output=True)
    assert control.returncode == 0, control.stderr


def test_default_profile_ships_in_the_engine_bundle(bundle):
    """The engine runs from a zipapp: the profile is read as package data, not from a path."""
    pyz, _sha = bundle
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from dockyard.engine.runtime import seccomp; "
        "print(seccomp.default_profile()['defaultAction'])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(pyz)], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "SCMP_ACT_ERRNO", out.stderr
