"""Paths resolved once, through file descriptors, and mounts made onto those descriptors.

A path string that is checked and then handed to mount(2) or open(2) is resolved twice; a container that
shares a volume can swap a component for a symlink in between and so aim the second resolution at the
host. Here every lookup walks one component at a time with O_PATH|O_NOFOLLOW relative to a descriptor
already held: symlinks are read and resolved as if the root descriptor were '/', '..' never climbs above
it, and the result is a descriptor. Mounts then name source and target as /proc/self/fd/N (or, on
kernels with the new mount API, take the descriptors directly), so what was checked is what is mounted.

The walk runs on every kernel (openat2's RESOLVE_IN_ROOT needs 5.6 and cannot create missing
components); mount_setattr(AT_RECURSIVE) (5.12) makes `ro`, nodev and nosuid reach every submount of a
bind, and older kernels get the same by a remount of each submount, each opened by a no-symlink walk.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections import deque

O_PATH = getattr(os, "O_PATH", 0o10000000)
MAX_SYMLINKS = 255

# Syscalls numbered >= 424 share their number on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442

AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# mount(2) flags (also in runtime.libc; repeated so this module stands alone for the copy-up code).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
_MS_TO_ATTR = (
    (MS_RDONLY, MOUNT_ATTR_RDONLY),
    (MS_NOSUID, MOUNT_ATTR_NOSUID),
    (MS_NODEV, MOUNT_ATTR_NODEV),
    (MS_NOEXEC, MOUNT_ATTR_NOEXEC),
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


# None: not probed yet. Tests set False to exercise the remount path.
new_mount_api: bool | None = None


def proc_fd(fd: int) -> str:
    """The magic link that names what `fd` refers to, for syscalls that only take paths."""
    return "/proc/self/fd/%d" % fd


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def open_in_root(root_fd: int, path: str, create: str | None = None, follow: bool = True) -> int:
    """An O_PATH descriptor of `path` resolved inside `root_fd` as if it were '/'.

    Symlinks (absolute or relative) and '..' never leave the root. create: None, "dir" or "file":
    missing components are made as directories (0755), the last one as `create` says. follow=False
    refuses any symlink on the way (ELOOP) instead of resolving it. The caller closes the descriptor.
    """
    parts = deque(_split(path))
    stack = [os.dup(root_fd)]  # stack[-1] is the directory we stand in; '..' pops
    budget = MAX_SYMLINKS
    try:
        while parts:
            part = parts.popleft()
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not parts
            try:
                fd = os.open(part, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None or budget <= 0:
                    raise
                budget -= 1
                _create(stack[-1], part, "file" if last and create == "file" else "dir")
                parts.appendleft(part)  # open what is there now: a racing symlink is resolved in root
                continue
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink("", dir_fd=fd)
                os.close(fd)
                budget -= 1
                if not follow or budget < 0:
                    raise OSError(errno.ELOOP, "symlink in %s" % path if not follow else "too many symlinks", path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts.extendleft(reversed(_split(target)))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, "not a directory: %s" % part, path)
            stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _create(dir_fd: int, name: str, kind: str) -> None:
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=dir_fd))
    except FileExistsError:
        pass  # made meanwhile (or a symlink): the next open decides


def _syscall(nr: int, *args) -> int:
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode("utf-8", "surrogateescape") for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) < 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))


def mount_on(source: str, target_fd: int, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2) of a filesystem (tmpfs, proc, ...) onto the directory `target_fd` refers to."""
    _mount(source, proc_fd(target_fd), fstype, flags, data)


def _attrs(flags: int) -> int:
    return sum(attr for bit, attr in _MS_TO_ATTR if flags & bit)


def bind(source_fd: int, target_fd: int, flags: int = 0, propagation: int = 0, recursive_flags: bool = True) -> int:
    """Bind (recursively) what `source_fd` refers to onto `target_fd`; -> an O_PATH fd of the new mount.

    flags: MS_RDONLY/MS_NOSUID/MS_NODEV/MS_NOEXEC for the new mount and (recursive_flags) every mount
    under it. propagation: MS_PRIVATE/MS_SLAVE/MS_SHARED, | MS_REC for the whole tree, or 0.
    """
    if has_new_mount_api():
        return _bind_new_api(source_fd, target_fd, flags, propagation, recursive_flags)
    return _bind_remount(source_fd, target_fd, flags, propagation, recursive_flags)


def has_new_mount_api() -> bool:
    """open_tree/move_mount/mount_setattr are there (kernel >= 5.12, not filtered by a seccomp policy)."""
    global new_mount_api
    if new_mount_api is None:
        # mount_setattr on a bad descriptor: EBADF (or EINVAL) where it exists, ENOSYS/EPERM where not.
        ret = _libc.syscall(
            ctypes.c_long(_SYS_MOUNT_SETATTR),
            ctypes.c_int(-1),
            ctypes.c_char_p(b""),
            ctypes.c_uint(0),
            ctypes.c_void_p(None),
            ctypes.c_size_t(0),
        )
        new_mount_api = ret < 0 and ctypes.get_errno() in (errno.EBADF, errno.EINVAL)
    return bool(new_mount_api)


def _bind_new_api(source_fd, target_fd, flags, propagation, recursive_flags):
    tree = _syscall(
        _SYS_OPEN_TREE,
        ctypes.c_int(source_fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE),
    )
    try:
        if flags:
            attr = _MountAttr(_attrs(flags), 0, 0, 0)
            at = AT_EMPTY_PATH | (AT_RECURSIVE if recursive_flags else 0)
            _setattr(tree, at, attr)
        _syscall(
            _SYS_MOVE_MOUNT,
            ctypes.c_int(tree),
            ctypes.c_char_p(b""),
            ctypes.c_int(target_fd),
            ctypes.c_char_p(b""),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        )
        if propagation:
            # The tree's descriptor names the mount, now attached: no path is looked up again.
            at = AT_EMPTY_PATH | (AT_RECURSIVE if propagation & MS_REC else 0)
            _setattr(tree, at, _MountAttr(0, 0, propagation & ~MS_REC, 0))
    except BaseException:
        os.close(tree)
        raise
    return tree


def _setattr(fd: int, at: int, attr: _MountAttr) -> None:
    _syscall(
        _SYS_MOUNT_SETATTR,
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(at),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )


def _bind_remount(source_fd, target_fd, flags, propagation, recursive_flags):
    src = os.fstat(source_fd)
    _mount(proc_fd(source_fd), proc_fd(target_fd), None, MS_BIND | MS_REC)
    # target_fd still names the directory underneath; the new mount is on top of it. Its mount point
    # path, read from the descriptor, is walked again without following any symlink and must lead to
    # the source's inode: anything swapped in meanwhile fails the check instead of being remounted.
    where = os.readlink(proc_fd(target_fd))
    top = open_no_symlinks(where)
    try:
        st = os.fstat(top)
        if (st.st_dev, st.st_ino) != (src.st_dev, src.st_ino):
            raise OSError(errno.EXDEV, "bind mount on %s moved before it could be remounted" % where)
        if flags:
            _mount(None, proc_fd(top), None, MS_REMOUNT | MS_BIND | flags)
            if recursive_flags:
                for sub in submounts(where):
                    fd = open_no_symlinks(sub)
                    try:
                        _mount(None, proc_fd(fd), None, MS_REMOUNT | MS_BIND | flags)
                    finally:
                        os.close(fd)
        if propagation:
            _mount(None, proc_fd(top), None, propagation)
    except BaseException:
        os.close(top)
        raise
    return top


def open_no_symlinks(path: str) -> int:
    """O_PATH fd of an absolute host path whose components may not be symlinks (ELOOP otherwise)."""
    root = os.open("/", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_in_root(root, path, follow=False)
    finally:
        os.close(root)


def _unescape(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def submounts(path: str) -> list[str]:
    """Mount points strictly below `path` in this mount namespace, outermost first."""
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = _unescape(line.split()[4])
            if mnt.startswith(prefix):
                out.append(mnt)
    return sorted(set(out), key=lambda p: p.count("/"))
