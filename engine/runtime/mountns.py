"""The container's filesystem, built inside its new mount namespace by the container's first process:
root bind, /proc, a minimal /dev (devpts, shm, mqueue), /sys, user mounts, pivot_root, masks.

Unprivileged containers get every mount `nodev` and only a few device nodes, bind-mounted from the
host: a device node created inside the container (CAP_MKNOD) cannot be opened, on cgroup v1 and v2
alike. This stands in for the v2 eBPF device filter.

Every mount target inside the root, and every bind source, is resolved once into a descriptor
(rootpath.open_in_root: symlinks resolved as if the root were '/') and mounted through that
descriptor, so a container sharing a volume cannot swap a component for a symlink to the host between
the check and the mount. `ro` and `nodev` on a bind reach its submounts too (rootpath.bind).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from dockyard.engine.runtime import libc, rootpath
from dockyard.engine.runtime.libc import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
    mount,
)
from dockyard.engine.runtime.rootpath import O_PATH, open_in_root, proc_fd

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Iterator

# Docker's defaults.
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
)

_FLAG_WORDS = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "strictatime": (MS_STRICTATIME, True),
}


class RootfsError(OSError):
    """The container's filesystem could not be assembled."""


def parse_mount_options(text, defaults=()):
    """'rw,noexec,size=64m' -> (flags, data): flag words become MS_* bits, the rest data."""
    flags = 0
    for word in defaults:
        bit, on = _FLAG_WORDS[word]
        flags = flags | bit if on else flags & ~bit
    data = []
    for word in [w.strip() for w in (text or "").split(",") if w.strip()]:
        if word in _FLAG_WORDS:
            bit, on = _FLAG_WORDS[word]
            flags = flags | bit if on else flags & ~bit
        else:
            data.append(word)
    return flags, ",".join(data)


@contextlib.contextmanager
def _target(root_fd: int, dest: str, kind: str) -> Iterator[int]:
    """An O_PATH descriptor of the mount point `dest` inside the root (made if missing, as `kind`)."""
    fd = open_in_root(root_fd, dest, create=kind)
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if is_dir != (kind == "dir"):
            raise RootfsError(
                errno.ENOTDIR if kind == "dir" else errno.EISDIR,
                "cannot mount %s on %s: it is %sa directory" % (kind, dest, "" if is_dir else "not "),
            )
        yield fd
    finally:
        os.close(fd)


def open_sources(spec: dict) -> dict[str, int]:
    """O_PATH descriptors of the root ("") and of every bind source, keyed by path.

    In a user namespace the init opens these while it still has the host's uid 0 for path lookups
    (the engine's directories are 0700 root), then becomes the namespace's root and mounts from them."""
    opened: dict[str, int] = {}
    try:
        opened[""] = os.open(spec["root"], O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for m in spec.get("mounts", []):
            if m.get("type", "bind") != "tmpfs" and m["source"] not in opened:
                try:
                    opened[m["source"]] = os.open(m["source"], O_PATH | os.O_CLOEXEC)
                except OSError as exc:
                    raise RootfsError(
                        exc.errno,
                        "cannot mount %s on %s: %s" % (m["source"], m["destination"], os.strerror(exc.errno or 0)),
                    ) from None
    except BaseException:
        for fd in opened.values():
            os.close(fd)
        raise
    return opened


def setup(spec, opened=None):
    """Assemble the root filesystem and pivot into it. Runs in the container's mount namespace.

    opened: from open_sources, in a user namespace; the mounts are made from those descriptors."""
    root = spec["root"]
    privileged = bool(spec.get("privileged"))
    nodev = 0 if privileged else MS_NODEV

    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if opened is None:
        # The root must be a mount point of its own for pivot_root. Its flags are set here, not inherited:
        # the engine's own mount of the image is nodev,nosuid; a container's root keeps setuid binaries
        # working (as Docker's) and is nodev unless privileged.
        mount(root, root, None, MS_BIND | MS_REC)
        mount(None, root, None, MS_REMOUNT | MS_BIND | nodev)
        root_fd = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        # In a user namespace the flags of the engine's image mount (nodev; with remapping not nosuid)
        # are locked: the bind keeps them (mount_setattr only adds).
        root_fd = rootpath.bind(opened[""], opened[""], nodev)
    try:
        _mount_proc(root_fd)
        _mount_dev(root_fd, spec, privileged, nodev)
        _mount_sys(root_fd, spec, privileged)
        for m in sorted(spec.get("mounts", []), key=lambda m: len(m["destination"].rstrip("/").split("/"))):
            _user_mount(root_fd, m, nodev, opened)
        os.fchdir(root_fd)
    finally:
        os.close(root_fd)

    libc.pivot_root(".", ".")
    libc.umount2(".", MNT_DETACH)
    os.chdir("/")

    if not privileged:
        for path in spec.get("masked_paths", MASKED_PATHS):
            _mask(path)
        for path in spec.get("readonly_paths", READONLY_PATHS):
            _readonly(path)
    if spec.get("readonly_rootfs"):
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | nodev)


def _mount_proc(root_fd):
    with _target(root_fd, "/proc", "dir") as fd:
        rootpath.mount_on("proc", fd, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV)


def _mount_dev(root_fd, spec, privileged, nodev):
    with _target(root_fd, "/dev", "dir") as fd:
        rootpath.mount_on("tmpfs", fd, "tmpfs", MS_NOSUID | MS_STRICTATIME | nodev, "mode=755,size=65536k")
    # The fresh tmpfs (nothing else can reach it yet), worked on through its descriptor: in a user
    # namespace the host path to it is not walkable by the container's root.
    dev = open_in_root(root_fd, "/dev")
    try:
        _fill_dev(dev, spec, privileged)
    finally:
        os.close(dev)


def _mount_in(dir_fd, name, mode, source, fstype, flags, data=None):
    os.mkdir(name, mode, dir_fd=dir_fd)
    fd = os.open(name, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        rootpath.mount_on(source, fd, fstype, flags, data)
    finally:
        os.close(fd)


def _fill_dev(dev, spec, privileged):
    _mount_in(dev, "pts", 0o755, "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    shm_size = int(spec.get("shm_size") or 64 * 1024 * 1024)
    _mount_in(dev, "shm", 0o1777, "shm", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=1777,size=%d" % shm_size)
    try:
        _mount_in(dev, "mqueue", 0o755, "mqueue", "mqueue", MS_NOSUID | MS_NOEXEC | MS_NODEV)
    except OSError:
        pass  # kernels without POSIX mqueue
    if privileged:
        _copy_host_devices(os.readlink(proc_fd(dev)))  # never in a user namespace (refused with remapping)
    else:
        for name in DEVICES:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dev)
            os.close(fd)
            fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev)
            try:
                mount("/dev/" + name, proc_fd(fd), None, MS_BIND)
            finally:
                os.close(fd)
    for name, link in DEV_LINKS:
        try:
            os.symlink(link, name, dir_fd=dev)
        except FileExistsError:
            pass
    if spec.get("tty"):
        os.close(os.open("console", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dev))


def _copy_host_devices(dev):
    for entry in os.scandir("/dev"):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            target = os.path.join(dev, entry.name)
            if entry.name in ("ptmx", "console") or os.path.lexists(target):
                continue
            try:
                os.mknod(target, st.st_mode, st.st_rdev)
                os.chown(target, st.st_uid, st.st_gid)
            except OSError:
                pass


def _mount_sys(root_fd, spec, privileged):
    flags = MS_NOSUID | MS_NOEXEC | MS_NODEV | (0 if privileged else MS_RDONLY)
    with _target(root_fd, "/sys", "dir") as fd:
        try:
            rootpath.mount_on("sysfs", fd, "sysfs", flags)
        except OSError as exc:
            # sysfs may refuse a new mount when the container shares the host's network namespace.
            if exc.errno != errno.EPERM:
                raise
            src = os.open("/sys", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.close(rootpath.bind(src, fd, flags))
            finally:
                os.close(src)
    if spec.get("cgroup2"):
        try:
            cg = open_in_root(root_fd, "/sys/fs/cgroup")
        except OSError:
            return
        try:
            if stat.S_ISDIR(os.fstat(cg).st_mode):
                flags = MS_NOSUID | MS_NOEXEC | MS_NODEV | (0 if privileged else MS_RDONLY)
                rootpath.mount_on("cgroup2", cg, "cgroup2", flags)
        except OSError:
            pass
        finally:
            os.close(cg)


_PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "slave": libc.MS_SLAVE,
    "rslave": libc.MS_SLAVE | MS_REC,
    "shared": libc.MS_SHARED,
    "rshared": libc.MS_SHARED | MS_REC,
}


def _user_mount(root_fd, m, nodev, opened=None):
    try:
        _user_mount_fds(root_fd, m, nodev, opened)
    except OSError as exc:
        what = m.get("source") or m.get("type", "bind")
        raise RootfsError(
            exc.errno, "cannot mount %s on %s: %s" % (what, m["destination"], os.strerror(exc.errno or 0))
        ) from None


def _user_mount_fds(root_fd, m, nodev, opened):
    kind = m.get("type", "bind")
    dest = m["destination"]
    if kind == "tmpfs":
        flags, data = parse_mount_options(m.get("options", ""), ("noexec", "nosuid", "nodev"))
        with _target(root_fd, dest, "dir") as fd:
            rootpath.mount_on("tmpfs", fd, "tmpfs", flags | nodev, data or None)
        return
    # The source is opened once (a host path the API caller named; symlinks followed, as Docker) and
    # mounted from that descriptor: what is mounted is what was opened.
    own = opened is None or m["source"] not in opened
    src = os.open(m["source"], O_PATH | os.O_CLOEXEC) if own else opened[m["source"]]
    try:
        is_dir = stat.S_ISDIR(os.fstat(src).st_mode)
        flags = nodev | int(m.get("flags") or 0) | (MS_RDONLY if m.get("readonly") else 0)
        propagation = _PROPAGATION.get(m.get("propagation") or "rprivate", 0)
        with _target(root_fd, dest, "dir" if is_dir else "file") as fd:
            os.close(rootpath.bind(src, fd, flags, propagation))
    finally:
        if own:
            os.close(src)


def _mask(path):
    try:
        st = os.stat(path)
    except OSError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", path, "tmpfs", MS_RDONLY, None)
        else:
            mount("/dev/null", path, None, MS_BIND)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise


def _readonly(path):
    if not os.path.exists(path):
        return
    mount(path, path, None, MS_BIND | MS_REC)
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def bind_console(slave_path):
    """Make /dev/console the container's terminal (after pivot_root)."""
    try:
        mount(slave_path, "/dev/console", None, MS_BIND)
    except OSError:
        pass
