"""ctypes bindings for syscalls the stdlib lacks: unshare, setns, mount, pivot_root, capset, prctl."""

import ctypes
import os

# The C library the interpreter runs on (dlopen(NULL)). Not ctypes.util.find_library: it runs ldconfig in a
# child and imports subprocess, shutil and more into the fork server, which imports this module (memory).
_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# pivot_root has no glibc wrapper; syscall numbers per architecture.
_SYS_PIVOT_ROOT = {
    "x86_64": 155,
    "aarch64": 41,
    "armv7l": 218,
    "ppc64le": 203,
    "s390x": 217,
    "riscv64": 41,
    "i686": 217,
    "i386": 217,
}
_SYS_CAPGET = {
    "x86_64": 125,
    "aarch64": 90,
    "armv7l": 184,
    "ppc64le": 183,
    "s390x": 184,
    "riscv64": 90,
    "i686": 184,
    "i386": 184,
}
_SYS_CAPSET = {
    "x86_64": 126,
    "aarch64": 91,
    "armv7l": 185,
    "ppc64le": 184,
    "s390x": 185,
    "riscv64": 91,
    "i686": 185,
    "i386": 185,
}
_ARCH = os.uname().machine  # what platform.machine() returns, without importing platform

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))
    return ret


def _b(path):
    if path is None:
        return None
    return path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path


def unshare(flags):
    _check(_libc.unshare(flags), "unshare")


def setns(fd, nstype=0):
    _check(_libc.setns(fd, nstype), "setns")


def mount(source, target, fstype, flags=0, data=None):
    data_b = _b(data)
    ret = _libc.mount(
        _b(source), _b(target), _b(fstype), flags, ctypes.c_char_p(data_b) if data_b is not None else None
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s (%s): %s" % (source, target, fstype or "bind", os.strerror(err)))


def umount2(target, flags=0):
    _check(_libc.umount2(_b(target), flags), "umount %s" % target)


def pivot_root(new_root, put_old):
    nr = _SYS_PIVOT_ROOT.get(_ARCH)
    if nr is None:
        raise OSError(38, "pivot_root: unsupported architecture %s" % _ARCH)
    _check(_libc.syscall(ctypes.c_long(nr), ctypes.c_char_p(_b(new_root)), ctypes.c_char_p(_b(put_old))), "pivot_root")


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl(%d)" % option)


def sethostname(name):
    data = _b(name)
    _check(_libc.sethostname(data, len(data)), "sethostname")


def setdomainname(name):
    data = _b(name)
    _check(_libc.setdomainname(data, len(data)), "setdomainname")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def capset(effective, permitted, inheritable):
    """Set this thread's capability sets from 64-bit masks."""
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(ctypes.c_long(_SYS_CAPSET[_ARCH]), ctypes.byref(hdr), ctypes.byref(data)), "capset")


def capget(pid=0):
    """(effective, permitted, inheritable) 64-bit masks of `pid` (0: this thread)."""
    hdr = _CapHeader(_CAP_V3, pid)
    data = (_CapData * 2)()
    _check(_libc.syscall(ctypes.c_long(_SYS_CAPGET[_ARCH]), ctypes.byref(hdr), ctypes.byref(data)), "capget")
    eff = data[0].effective | (data[1].effective << 32)
    perm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, perm, inh


def set_process_name(name):
    """What ps shows in the comm field (15 bytes max)."""
    try:
        prctl(PR_SET_NAME, ctypes.cast(ctypes.c_char_p(_b(name)[:15]), ctypes.c_void_p).value)
    except OSError:
        pass
