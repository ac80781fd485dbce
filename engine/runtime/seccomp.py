"""Seccomp for containers: a profile in Docker's JSON format (Docker's default, shipped as
seccomp_default.json, or a user's `--security-opt seccomp=<file>`), evaluated for the container's
capabilities and the host's architecture and kernel, and loaded with libseccomp through ctypes.

seccomp_default.json is Docker's published default profile, copied unchanged from
github.com/moby/profiles (seccomp/default.json at cd3bed8061c7b7378b61fc6827c7885779417a75,
Apache License 2.0, Copyright The Moby Authors); to update, copy the newer file over it.

Three steps, usable separately:
  parse_profile / validate_profile  user input -> profile dict, or ProfileError (a 400)
  resolve                            profile + capabilities + arch + kernel -> the rules that apply
  SeccompFilter                      the rules as a libseccomp filter: load() it into this process
                                     right before execve, or export_bpf() it for install_bpf()
"""

from __future__ import annotations

import ctypes
import json
import os
import re

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Optional, Tuple

DEFAULT_PROFILE_RESOURCE = "seccomp_default.json"

# Machine names (os.uname().machine) -> the Go-style names profiles use in includes/excludes.arches.
_MACHINE_TO_NATIVE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "mips64": "mips64",
}
# Go-style name -> the archMap key for it (Docker's nativeToSeccomp).
_NATIVE_TO_SCMP = {
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
    "mips64": "SCMP_ARCH_MIPS64",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "riscv64": "SCMP_ARCH_RISCV64",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
}

EPERM = 1
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
# Actions that take a return code (errnoRet; EPERM when absent, as runc).
_ACTIONS_WITH_RET = {"SCMP_ACT_ERRNO": _ACT_ERRNO, "SCMP_ACT_TRACE": _ACT_TRACE}
_ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
}
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# enum scmp_filter_attr
_ATTR_CTL_NNP = 3
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_ATTR_CTL_OPTIMIZE = 8
_ATTR_CTL_WAITKILL = 10
# Profile "flags" -> filter attribute (None: nothing to do; the init is single-threaded, so TSYNC is moot).
_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": None,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": _ATTR_CTL_WAITKILL,
}
_NR_SCMP_ERROR = -1
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_KERNEL_VERSION = re.compile(r"^(\d+)\.(\d+)$")


class ProfileError(ValueError):
    """A seccomp profile the engine cannot use; the message is meant for the API client (a 400)."""


class SeccompUnavailable(OSError):
    """libseccomp cannot be loaded, or the kernel refused the filter."""


# -- profiles ------------------------------------------------------------------------------------
def default_profile() -> Dict[str, Any]:
    """Docker's default profile (a fresh dict each call); works from the zipapp too."""
    import pkgutil  # here, not at the top: the fork server imports this module (install_bpf) and needs no pkgutil

    data = pkgutil.get_data(__name__.rpartition(".")[0], DEFAULT_PROFILE_RESOURCE)
    if data is None:
        raise SeccompUnavailable("the default seccomp profile %s is missing" % DEFAULT_PROFILE_RESOURCE)
    return json.loads(data.decode("utf-8"))


def parse_profile(text: "str | bytes") -> Dict[str, Any]:
    """The JSON the docker CLI sends for `--security-opt seccomp=<file>`, decoded and validated."""
    try:
        profile = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError("Decoding seccomp profile failed: %s" % exc) from None
    validate_profile(profile)
    return profile


def validate_profile(profile: Any) -> None:
    """Raise ProfileError naming the first thing wrong in `profile` (Docker's JSON format)."""
    if not isinstance(profile, dict):
        raise ProfileError("Decoding seccomp profile failed: the profile must be a JSON object")
    default = profile.get("defaultAction") or ""
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ProfileError("seccomp profile: 'syscalls' must be a list")
    if default:
        _check_action(default, "defaultAction")
    elif syscalls:
        raise ProfileError("seccomp profile: 'defaultAction' is required when 'syscalls' is given")
    _check_uint(profile.get("defaultErrnoRet"), "defaultErrnoRet", 0xFFFF, optional=True)
    if profile.get("architectures") and profile.get("archMap"):
        raise ProfileError(
            "both 'architectures' and 'archMap' are specified in the seccomp profile, "
            "use either 'architectures' or 'archMap'"
        )
    for arch in profile.get("architectures") or []:
        _check_arch_name(arch)
    for entry in profile.get("archMap") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise ProfileError("seccomp profile: each 'archMap' entry needs an 'architecture'")
        for arch in [entry["architecture"]] + list(entry.get("subArchitectures") or []):
            _check_arch_name(arch)
    for flag in profile.get("flags") or []:
        if flag not in _FLAGS:
            raise ProfileError("seccomp profile: unsupported flag %r" % (flag,))
    for index, call in enumerate(syscalls):
        _check_syscall(call, index)


def _check_syscall(call: Any, index: int) -> None:
    where = "seccomp profile: syscalls[%d]" % index
    if not isinstance(call, dict):
        raise ProfileError("%s must be an object" % where)
    names = call.get("names") or []
    if call.get("name"):
        if names:
            raise ProfileError(
                "both 'name' and 'names' are specified in the seccomp profile, use either 'name' or 'names'"
            )
        names = [call["name"]]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ProfileError("%s: 'names' must be a list of syscall names" % where)
    _check_action(call.get("action"), where + ".action")
    _check_uint(call.get("errnoRet"), where + ".errnoRet", 0xFFFF, optional=True)
    args = call.get("args") or []
    if not isinstance(args, list):
        raise ProfileError("%s: 'args' must be a list" % where)
    for arg in args:
        if not isinstance(arg, dict):
            raise ProfileError("%s: each of 'args' must be an object" % where)
        _check_uint(arg.get("index"), where + ".args.index", 5)
        _check_uint(arg.get("value"), where + ".args.value", 2**64 - 1)
        _check_uint(arg.get("valueTwo"), where + ".args.valueTwo", 2**64 - 1, optional=True)
        if arg.get("op") not in _OPERATORS:
            raise ProfileError("%s: unknown comparison operator %r" % (where, arg.get("op")))
    for key in ("includes", "excludes"):
        cond = call.get(key)
        if cond is None:
            continue
        if not isinstance(cond, dict):
            raise ProfileError("%s.%s must be an object" % (where, key))
        for listed in ("caps", "arches"):
            values = cond.get(listed) or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ProfileError("%s.%s.%s must be a list of strings" % (where, key, listed))
        if cond.get("minKernel"):
            parse_kernel_version(cond["minKernel"])


def _check_action(action: Any, where: str) -> None:
    if action == "SCMP_ACT_NOTIFY":
        raise ProfileError("%s: SCMP_ACT_NOTIFY is not supported (no seccomp agent)" % where)
    if action not in _ACTIONS and action not in _ACTIONS_WITH_RET:
        raise ProfileError("%s: unknown seccomp action %r" % (where, action))


def _check_uint(value: Any, where: str, limit: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ProfileError("%s: expected an integer from 0 to %d, got %r" % (where, limit, value))


def _check_arch_name(arch: Any) -> None:
    if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
        raise ProfileError("seccomp profile: unknown architecture %r" % (arch,))


def parse_kernel_version(text: Any) -> Tuple[int, int]:
    """'5.8' -> (5, 8); ProfileError for anything else (Docker's "<kernel>.<major>")."""
    match = _KERNEL_VERSION.match(text) if isinstance(text, str) else None
    if not match or (int(match.group(1)), int(match.group(2))) == (0, 0):
        raise ProfileError('invalid kernel version: %r, expected "<kernel>.<major>"' % (text,))
    return int(match.group(1)), int(match.group(2))


def host_kernel() -> Tuple[int, int]:
    """(kernel, major) of the running kernel: '6.1.0-13-amd64' -> (6, 1)."""
    parts = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(parts.group(1)), int(parts.group(2))) if parts else (0, 0)


def native_arch(machine: Optional[str] = None) -> str:
    """The Go-style architecture name profiles use ('amd64', 'arm64', ...) for the machine (os.uname())."""
    machine = machine or os.uname().machine
    return _MACHINE_TO_NATIVE.get(machine, machine)


# -- evaluation ----------------------------------------------------------------------------------
def resolve(
    profile: Dict[str, Any],
    capabilities: Iterable[str],
    arch: Optional[str] = None,
    kernel: Optional[Tuple[int, int]] = None,
) -> Optional[Dict[str, Any]]:
    """The rules of `profile` that apply to a container holding `capabilities` (names, with or
    without CAP_) on `arch` (Go-style, default: this host) and `kernel` (default: this host), as
    Docker's setupSeccomp evaluates includes/excludes. None: the profile confines nothing."""
    validate_profile(profile)
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    arch = arch or native_arch()
    kernel = kernel or host_kernel()
    held = {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in capabilities}
    architectures = list(profile.get("architectures") or [])
    scmp_arch = _NATIVE_TO_SCMP.get(arch)
    for entry in profile.get("archMap") or []:
        if scmp_arch and entry["architecture"] == scmp_arch:
            architectures = [entry["architecture"]] + list(entry.get("subArchitectures") or [])
            break
    rules = []
    for call in profile.get("syscalls") or []:
        if _applies(call, held, arch, kernel):
            names = list(call.get("names") or []) or [call["name"]]
            rules.append(
                {
                    "names": names,
                    "action": call["action"],
                    "errnoRet": call.get("errnoRet"),
                    "args": [dict(a) for a in call.get("args") or []],
                }
            )
    return {
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile.get("defaultErrnoRet"),
        "architectures": architectures,
        "flags": list(profile.get("flags") or []),
        "syscalls": rules,
    }


def _applies(call: Dict[str, Any], held: set, arch: str, kernel: Tuple[int, int]) -> bool:
    excludes = call.get("excludes") or {}
    if arch in (excludes.get("arches") or []):
        return False
    if any(c in held for c in excludes.get("caps") or []):
        return False
    if excludes.get("minKernel") and kernel >= parse_kernel_version(excludes["minKernel"]):
        return False
    includes = call.get("includes") or {}
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not all(c in held for c in includes.get("caps") or []):
        return False
    if includes.get("minKernel") and kernel < parse_kernel_version(includes["minKernel"]):
        return False
    return True


def action_value(action: str, errno_ret: Optional[int] = None) -> int:
    """libseccomp's action word for a profile action (SCMP_ACT_ERRNO(errno_ret or EPERM) ...)."""
    if action in _ACTIONS_WITH_RET:
        return _ACTIONS_WITH_RET[action] | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if action not in _ACTIONS:
        raise ProfileError("unknown seccomp action %r" % (action,))
    return _ACTIONS[action]


# -- libseccomp ----------------------------------------------------------------------------------
class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_lib: Optional[ctypes.CDLL] = None
_lib_error: Optional[str] = None


def _libseccomp() -> ctypes.CDLL:
    global _lib, _lib_error
    if _lib is not None:
        return _lib
    if _lib_error is not None:
        raise SeccompUnavailable(_lib_error)
    import ctypes.util  # here, not at the top: it imports subprocess and more, and the fork server imports this module

    names = ["libseccomp.so.2"] + [n for n in [ctypes.util.find_library("seccomp")] if n]
    for name in names:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError:
            continue
    else:
        _lib_error = "libseccomp (libseccomp.so.2) is not installed"
        raise SeccompUnavailable(_lib_error)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    _lib = lib
    return lib


def libseccomp_version() -> Optional[Tuple[int, int, int]]:
    """(major, minor, micro) of the libseccomp found, or None when there is none."""
    try:
        ver = _libseccomp().seccomp_version().contents
    except SeccompUnavailable:
        return None
    return ver.major, ver.minor, ver.micro


def unavailable_reason() -> Optional[str]:
    """Why seccomp cannot be enforced on this host, or None when it can."""
    try:
        with open("/proc/self/status") as fh:
            if not any(line.startswith("Seccomp:") for line in fh):
                return "the kernel has no seccomp support (CONFIG_SECCOMP)"
    except OSError:
        pass
    try:
        _libseccomp()
    except SeccompUnavailable as exc:
        return str(exc)
    return None


def available() -> bool:
    """True when containers can be confined with seccomp here (/info SecurityOptions "name=seccomp")."""
    return unavailable_reason() is None


class SeccompFilter:
    """A libseccomp filter built from resolve()'s output. load() it, or export_bpf() it; close() frees it."""

    def __init__(self, rules: Dict[str, Any]) -> None:
        self._lib = _libseccomp()
        default = action_value(rules["defaultAction"], rules.get("defaultErrnoRet"))
        self._ctx: Optional[int] = self._lib.seccomp_init(default)
        if not self._ctx:
            raise SeccompUnavailable("seccomp_init failed")
        try:
            self._configure(rules, default)
        except BaseException:
            self.close()
            raise

    def _configure(self, rules: Dict[str, Any], default: int) -> None:
        lib = self._lib
        for arch in rules.get("architectures") or []:
            token = lib.seccomp_arch_resolve_name(arch[len("SCMP_ARCH_") :].lower().encode())
            if not token:
                raise ProfileError("seccomp profile: architecture %s is unknown to this libseccomp" % arch)
            rc = lib.seccomp_arch_add(self._ctx, token)
            if rc < 0 and rc != -17:  # -EEXIST: the native one is in already
                raise ProfileError("seccomp profile: cannot add architecture %s: %s" % (arch, os.strerror(-rc)))
        # The caller decides about no_new_privs (process.start); libseccomp must not set it.
        self._attr(_ATTR_CTL_NNP, 0)
        for flag in rules.get("flags") or []:
            attr = _FLAGS.get(flag)
            if attr is not None:
                self._attr(attr, 1, "seccomp flag %s is not supported here" % flag)
        if len(rules["syscalls"]) > 32:
            try:
                self._attr(_ATTR_CTL_OPTIMIZE, 2)  # binary tree: faster on long lists (libseccomp >= 2.5)
            except SeccompUnavailable:
                pass
        for rule in rules["syscalls"]:
            action = action_value(rule["action"], rule.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses rules that repeat the default
            for name in rule["names"]:
                self._add(name, action, rule.get("args") or [])

    def _attr(self, attr: int, value: int, message: str = "seccomp_attr_set failed") -> None:
        rc = self._lib.seccomp_attr_set(self._ctx, attr, value)
        if rc < 0:
            raise SeccompUnavailable(-rc, message)

    def _add(self, name: str, action: int, args: List[Dict[str, Any]]) -> None:
        number = self._lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            return  # unknown to this libseccomp: skipped, as Docker does
        conds = [_ArgCmp(a["index"], _OPERATORS[a["op"]], a["value"], a.get("valueTwo") or 0) for a in args]
        indexes = [c.arg for c in conds]
        # Two conditions on one argument cannot be ANDed by libseccomp: one rule each (runc).
        groups = [[c] for c in conds] if len(set(indexes)) != len(indexes) else [conds]
        for group in groups:
            array = (_ArgCmp * len(group))(*group) if group else None
            rc = self._lib.seccomp_rule_add_array(self._ctx, action, number, len(group), array)
            if rc < 0:
                raise ProfileError("error adding seccomp rule for syscall %s: %s" % (name, os.strerror(-rc)))

    def load(self) -> None:
        """Install the filter on the calling thread; needs no_new_privs or CAP_SYS_ADMIN."""
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise SeccompUnavailable(-rc, "loading the seccomp filter failed: %s" % os.strerror(-rc))

    def export_bpf(self) -> bytes:
        """The compiled classic-BPF program (struct sock_filter array), for install_bpf()."""
        read_fd, write_fd = os.pipe()
        try:
            chunks = []
            rc = self._lib.seccomp_export_bpf(self._ctx, write_fd)
            os.close(write_fd)
            write_fd = -1
            if rc < 0:
                raise SeccompUnavailable(-rc, "seccomp_export_bpf failed: %s" % os.strerror(-rc))
            while True:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)

    def close(self) -> None:
        """seccomp_release; the filter object is unusable afterwards."""
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self) -> "SeccompFilter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(profile: Dict[str, Any], capabilities: Iterable[str], arch: Optional[str] = None) -> bool:
    """resolve + SeccompFilter.load in one call; False when the profile confines nothing."""
    rules = resolve(profile, capabilities, arch)
    if rules is None:
        return False
    with SeccompFilter(rules) as filt:
        filt.load()
    return True


def compile_bpf(profile: Dict[str, Any], capabilities: Iterable[str], arch: Optional[str] = None) -> Optional[bytes]:
    """resolve + export_bpf: the program a container init installs with install_bpf (None: unconfined)."""
    rules = resolve(profile, capabilities, arch)
    if rules is None:
        return None
    with SeccompFilter(rules) as filt:
        return filt.export_bpf()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_bpf(program: bytes) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) with a compile_bpf() program; no libseccomp needed.
    Needs no_new_privs or CAP_SYS_ADMIN, like load()."""
    if not program or len(program) % 8:
        raise ValueError("a seccomp BPF program is a non-empty array of 8-byte instructions")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompUnavailable(err, "installing the seccomp filter failed: %s" % os.strerror(err))
