"""The device allow-list on cgroup v2: an eBPF BPF_PROG_TYPE_CGROUP_DEVICE program, assembled here
from rules in the cgroup v1 devices.allow format ("c 1:3 rwm", "c *:* m", "b 8:* r", "a"), loaded
with bpf(2) and attached to a container's cgroup directory. cgroup v2 has no devices controller:
without this, a container that may remount /dev (CAP_SYS_ADMIN) can open the host's disks.

The program is runc's (opencontainers/cgroups devices/devicefilter.go, after crun's ebpf.c):
R2 = device type, R3 = access, R4 = major, R5 = minor from struct bpf_cgroup_dev_ctx; one block
per rule that jumps to the next on any mismatch and returns 1 (allow) when all match; the end
returns 0 (deny). Only allow rules: everything not listed is denied.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import resource
import struct
import sys

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Iterable, List, Optional

# bpf(2) commands, types and flags (include/uapi/linux/bpf.h)
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_DETACH = 9
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_PROG_QUERY = 16
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
_BPF_DEVCG_ACC_MKNOD = 1
_BPF_DEVCG_ACC_READ = 2
_BPF_DEVCG_ACC_WRITE = 4
_BPF_DEVCG_DEV_BLOCK = 1
_BPF_DEVCG_DEV_CHAR = 2
_ACCESS_BITS = {"m": _BPF_DEVCG_ACC_MKNOD, "r": _BPF_DEVCG_ACC_READ, "w": _BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = _BPF_DEVCG_ACC_MKNOD | _BPF_DEVCG_ACC_READ | _BPF_DEVCG_ACC_WRITE

# eBPF opcodes used by the program
_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_ALU32_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_ALU32_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_ALU32_MOV_K = 0xB4  # BPF_ALU | BPF_MOV | BPF_K
_ALU32_MOV_X = 0xBC  # BPF_ALU | BPF_MOV | BPF_X
_JMP_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_JMP_JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
_JMP_EXIT = 0x95  # BPF_JMP | BPF_EXIT
R0, R1, R2, R3, R4, R5 = range(6)

LICENSE = b"Apache"  # the kernel's MODULE_LICENSE string for the program, as runc's
_PROG_NAME = b"dockyard_dev"
_LOG_SIZE = 1 << 16

_SYS_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "armv7l": 386,
    "ppc64le": 361,
    "s390x": 351,
    "i686": 357,
    "i386": 357,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class DeviceRuleError(ValueError):
    """A device rule that is not in devices.allow's format."""


class BpfError(OSError):
    """bpf(2) failed; for a rejected program, `log` is the verifier's output."""

    def __init__(self, err: int, message: str, log: str = "") -> None:
        super().__init__(err, message + (": " + log.strip() if log.strip() else ""))
        self.log = log


DeviceRule = collections.namedtuple("DeviceRule", "kind major minor access")
DeviceRule.__doc__ = """One allow rule: kind 'c', 'b' or 'a' (any); major/minor None for '*'; access from 'rwm'.
(collections.namedtuple, not typing.NamedTuple: the fork server imports this module and no typing.)"""


def parse_rule(text: str) -> DeviceRule:
    """'c 1:3 rwm' -> DeviceRule('c', 1, 3, 'rwm'); 'a' alone allows everything."""
    parts = str(text).split()
    if parts == ["a"]:
        return DeviceRule("a", None, None, "rwm")
    if len(parts) != 3 or parts[0] not in ("a", "b", "c") or parts[1].count(":") != 1:
        raise DeviceRuleError("invalid device rule %r: expected '<a|b|c> <major|*>:<minor|*> <rwm>'" % text)
    numbers: List[Optional[int]] = []
    for field in parts[1].split(":"):
        if field == "*":
            numbers.append(None)
        elif field.isdigit() and int(field) <= 0xFFFFFFFF:
            numbers.append(int(field))
        else:
            raise DeviceRuleError("invalid device number %r in rule %r" % (field, text))
    access = parts[2]
    if not access or any(c not in "rwm" for c in access) or len(set(access)) != len(access):
        raise DeviceRuleError("invalid access %r in device rule %r: a combination of r, w, m" % (access, text))
    return DeviceRule(parts[0], numbers[0], numbers[1], access)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    # struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm}: the nibble order follows
    # the bitfield layout, which is the byte order's.
    regs = (src << 4) | dst if sys.byteorder == "little" else (dst << 4) | src
    return struct.pack("=BBhi", code, regs, off, imm)


def _rule_block(rule: DeviceRule) -> List[bytes]:
    """Instructions of one rule; every mismatch jumps to the first instruction after the block."""
    checks: List[tuple] = []  # (opcode, dst, src, imm) of conditional jumps, or plain instructions
    if rule.kind != "a":
        kind = _BPF_DEVCG_DEV_CHAR if rule.kind == "c" else _BPF_DEVCG_DEV_BLOCK
        checks.append(("jne", _JMP_JNE_K, R2, 0, kind))
    access = 0
    for char in rule.access:
        access |= _ACCESS_BITS[char]
    if access != _ALL_ACCESS:
        # if (R3 & access) != R3 goto next: R1 (the context, already read) is the scratch register
        checks.append(("op", _ALU32_MOV_X, R1, R3, 0))
        checks.append(("op", _ALU32_AND_K, R1, 0, access))
        checks.append(("jne", _JMP_JNE_X, R1, R3, 0))
    if rule.major is not None:
        checks.append(("jne", _JMP_JNE_K, R4, 0, _s32(rule.major)))
    if rule.minor is not None:
        checks.append(("jne", _JMP_JNE_K, R5, 0, _s32(rule.minor)))
    length = len(checks) + 2  # + mov r0, 1; exit
    out = []
    for pc, (what, code, dst, src, imm) in enumerate(checks):
        offset = length - pc - 1 if what == "jne" else 0
        out.append(_insn(code, dst, src, offset, imm))
    out.append(_insn(_ALU32_MOV_K, R0, imm=1))
    out.append(_insn(_JMP_EXIT))
    return out


def _s32(value: int) -> int:
    # JNE compares the zero-extended u32 field with the sign-extended 32-bit imm in 64 bits, so
    # numbers above 2**31-1 could never match: refuse them instead of building a dead rule.
    if value > 0x7FFFFFFF:
        raise DeviceRuleError("device number %d is too large for the filter" % value)
    return value


def assemble(rules: Iterable["str | DeviceRule"]) -> bytes:
    """The eBPF program (struct bpf_insn array) allowing exactly `rules`, denying the rest."""
    program = [
        _insn(_LDX_MEM_W, R2, R1, 0),  # R2 = access_type
        _insn(_ALU32_AND_K, R2, imm=0xFFFF),  # low 16 bits: device type
        _insn(_LDX_MEM_W, R3, R1, 0),
        _insn(_ALU32_RSH_K, R3, imm=16),  # high 16 bits: access
        _insn(_LDX_MEM_W, R4, R1, 4),  # major
        _insn(_LDX_MEM_W, R5, R1, 8),  # minor
    ]
    for rule in rules:
        block = _rule_block(rule if isinstance(rule, DeviceRule) else parse_rule(rule))
        program.extend(block)
        if len(block) == 2:
            return b"".join(program)  # 'a *:* rwm' allows everything: the verifier refuses dead code after it
    program.append(_insn(_ALU32_MOV_K, R0, imm=0))
    program.append(_insn(_JMP_EXIT))
    return b"".join(program)


# -- bpf(2) --------------------------------------------------------------------------------------
def _bpf(cmd: int, attr: ctypes.Array) -> int:
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise BpfError(errno.ENOSYS, "bpf(2): unknown syscall number on %s" % os.uname().machine)
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(number), ctypes.c_long(cmd), attr, ctypes.c_long(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, "bpf(%d) failed: %s" % (cmd, os.strerror(err)))
    return ret


def load_program(program: bytes) -> int:
    """BPF_PROG_LOAD a CGROUP_DEVICE program; returns its fd. BpfError carries the verifier log."""
    if not program or len(program) % 8:
        raise ValueError("an eBPF program is a non-empty array of 8-byte instructions")
    insns = ctypes.create_string_buffer(program, len(program))
    license_buf = ctypes.create_string_buffer(LICENSE)
    try:
        return _load(insns, license_buf, None)
    except BpfError as exc:
        if exc.errno == errno.EPERM:
            # Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (runc lifts it the same way).
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            try:
                return _load(insns, license_buf, None)
            except BpfError:
                pass
        log = ctypes.create_string_buffer(_LOG_SIZE)
        try:
            return _load(insns, license_buf, log)
        except BpfError as again:
            text = log.value.decode("utf-8", "replace")
            raise BpfError(again.errno or errno.EINVAL, "loading the device filter failed", text) from None


def _load(insns: ctypes.Array, license_buf: ctypes.Array, log: Optional[ctypes.Array]) -> int:
    attr = struct.pack(
        "=IIQQIIQII16sII",
        _BPF_PROG_TYPE_CGROUP_DEVICE,
        len(insns) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_buf),
        1 if log is not None else 0,
        len(log) if log is not None else 0,
        ctypes.addressof(log) if log is not None else 0,
        0,
        0,
        _PROG_NAME,
        0,
        _BPF_CGROUP_DEVICE,
    )
    return _bpf(_BPF_PROG_LOAD, ctypes.create_string_buffer(attr, len(attr)))


def attached_program_ids(cgroup_fd: int) -> List[int]:
    """IDs of the CGROUP_DEVICE programs attached to the cgroup directory open as `cgroup_fd`."""
    size = 64
    for _ in range(10):
        ids = (ctypes.c_uint32 * size)()
        attr = ctypes.create_string_buffer(
            struct.pack("=IIIIQI4x", cgroup_fd, _BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), size)
        )
        try:
            _bpf(_BPF_PROG_QUERY, attr)
        except BpfError as exc:
            if exc.errno == errno.ENOSPC:
                size = struct.unpack_from("=I", attr.raw, 24)[0]
                continue
            raise
        count = struct.unpack_from("=I", attr.raw, 24)[0]
        return list(ids[:count])
    raise BpfError(errno.ENOSPC, "could not list the cgroup's device programs")


def _program_fd(prog_id: int) -> int:
    attr = struct.pack("=III", prog_id, 0, 0)
    return _bpf(_BPF_PROG_GET_FD_BY_ID, ctypes.create_string_buffer(attr, len(attr)))


def _attach_cmd(cmd: int, cgroup_fd: int, prog_fd: int, flags: int = 0, replace_fd: int = 0) -> None:
    attr = struct.pack("=IIIII", cgroup_fd, prog_fd, _BPF_CGROUP_DEVICE, flags, replace_fd)
    _bpf(cmd, ctypes.create_string_buffer(attr, len(attr)))


def _open_cgroup(cgroup_dir: str) -> int:
    return os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def attach(cgroup_dir: str, rules: Iterable["str | DeviceRule"], extra: Iterable["str | DeviceRule"] = ()) -> None:
    """Allow only `rules` + `extra` (e.g. --device) to processes in the cgroup v2 directory
    `cgroup_dir`; any device program attached there before is replaced (atomically with
    BPF_F_REPLACE when there is exactly one, else attach-then-detach, as runc)."""
    program = assemble(list(rules) + list(extra))
    dir_fd = _open_cgroup(cgroup_dir)
    prog_fd = -1
    old_fds: List[int] = []
    try:
        for prog_id in attached_program_ids(dir_fd):
            try:
                old_fds.append(_program_fd(prog_id))
            except BpfError as exc:
                if exc.errno != errno.ENOENT:  # gone meanwhile
                    raise
        prog_fd = load_program(program)
        if len(old_fds) == 1:
            try:
                _attach_cmd(_BPF_PROG_ATTACH, dir_fd, prog_fd, BPF_F_ALLOW_MULTI | BPF_F_REPLACE, old_fds[0])
                return
            except BpfError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # no BPF_F_REPLACE before 5.6
                    raise
        _attach_cmd(_BPF_PROG_ATTACH, dir_fd, prog_fd, BPF_F_ALLOW_MULTI)
        for old in old_fds:
            _attach_cmd(_BPF_PROG_DETACH, dir_fd, old)
    finally:
        for fd in old_fds + ([prog_fd] if prog_fd >= 0 else []) + [dir_fd]:
            os.close(fd)


def detach_all(cgroup_dir: str) -> int:
    """Detach every device program from `cgroup_dir`; returns how many were detached."""
    dir_fd = _open_cgroup(cgroup_dir)
    count = 0
    try:
        for prog_id in attached_program_ids(dir_fd):
            try:
                prog_fd = _program_fd(prog_id)
            except BpfError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
            try:
                _attach_cmd(_BPF_PROG_DETACH, dir_fd, prog_fd)
                count += 1
            finally:
                os.close(prog_fd)
    finally:
        os.close(dir_fd)
    return count


def unsupported_reason() -> Optional[str]:
    """Why device programs cannot be loaded here (no bpf(2), no CGROUP_DEVICE support), or None."""
    try:
        os.close(load_program(assemble(["c 1:3 rwm"])))
    except BpfError as exc:
        return "the kernel cannot load a cgroup device BPF program: %s" % exc
    return None
