"""The container's filesystem, built inside its new mount namespace by the container's first process:
root bind, /proc, a minimal /dev (devpts, shm, mqueue), /sys, user mounts, pivot_root, masks.

Unprivileged containers get every mount `nodev` and only a few device nodes, bind-mounted from the
host: a device node created inside the container (CAP_MKNOD) cannot be opened, on cgroup v1 and v2
alike. This stands in for the v2 eBPF device filter.
"""

import errno
import os
import stat

from dockyard.engine.runtime import libc
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
MAX_SYMLINKS = 255

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


def secure_join(root, path):
    """`path` inside `root` with every symlink resolved as if `root` were '/': never escapes.

    Missing components are kept literally (they will be created under root).
    """
    root = os.path.abspath(root)
    parts = [p for p in path.split("/") if p and p != "."]
    resolved = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *(resolved + [part]))
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        except NotADirectoryError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise RootfsError(errno.ELOOP, "too many symlinks resolving %s" % path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved) if resolved else root


def _mkdirs(path, mode=0o755):
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except FileExistsError:
        pass


def ensure_mountpoint(root, dest, is_dir):
    """Create `dest` (inside root, symlink-safe) as a directory or an empty file; return the host path."""
    target = secure_join(root, dest)
    if is_dir:
        if not os.path.isdir(target):
            _mkdirs(target)
    else:
        if not os.path.exists(target):
            _mkdirs(os.path.dirname(target))
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.close(fd)
    return target


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


def _bind(source, target, readonly=False, extra=0, recursive=True):
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly or extra:
        # A bind mount's flags can only be set by a remount of that bind.
        mount(None, target, None, MS_REMOUNT | MS_BIND | extra | (MS_RDONLY if readonly else 0))


def setup(spec):
    """Assemble the root filesystem and pivot into it. Runs in the container's mount namespace."""
    root = spec["root"]
    privileged = bool(spec.get("privileged"))
    nodev = 0 if privileged else MS_NODEV

    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The root must be a mount point of its own for pivot_root, and carry nodev.
    _bind(root, root, extra=nodev)

    _mount_proc(root)
    _mount_dev(root, spec, privileged, nodev)
    _mount_sys(root, spec, privileged)

    for m in sorted(spec.get("mounts", []), key=lambda m: len(m["destination"].rstrip("/").split("/"))):
        _user_mount(root, m, nodev)

    os.chdir(root)
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


def _mount_proc(root):
    target = ensure_mountpoint(root, "/proc", True)
    mount("proc", target, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV)


def _mount_dev(root, spec, privileged, nodev):
    dev = ensure_mountpoint(root, "/dev", True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME | nodev, "mode=755,size=65536k")
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    shm_size = int(spec.get("shm_size") or 64 * 1024 * 1024)
    mount("shm", shm, "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=1777,size=%d" % shm_size)
    mq = os.path.join(dev, "mqueue")
    os.mkdir(mq, 0o755)
    try:
        mount("mqueue", mq, "mqueue", MS_NOSUID | MS_NOEXEC | MS_NODEV)
    except OSError:
        pass  # kernels without POSIX mqueue
    if privileged:
        _copy_host_devices(dev)
    else:
        for name in DEVICES:
            target = os.path.join(dev, name)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            _bind("/dev/" + name, target, recursive=False)
    for name, link in DEV_LINKS:
        try:
            os.symlink(link, os.path.join(dev, name))
        except FileExistsError:
            pass
    if spec.get("tty"):
        os.close(os.open(os.path.join(dev, "console"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


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


def _mount_sys(root, spec, privileged):
    target = ensure_mountpoint(root, "/sys", True)
    flags = MS_NOSUID | MS_NOEXEC | MS_NODEV | (0 if privileged else MS_RDONLY)
    try:
        mount("sysfs", target, "sysfs", flags)
    except OSError as exc:
        # sysfs may refuse a new mount when the container shares the host's network namespace.
        if exc.errno != errno.EPERM:
            raise
        _bind("/sys", target, readonly=not privileged, extra=MS_NOSUID | MS_NOEXEC | MS_NODEV)
    if spec.get("cgroup2"):
        cg = os.path.join(target, "fs", "cgroup")
        if os.path.isdir(cg):
            try:
                mount("cgroup2", cg, "cgroup2", MS_NOSUID | MS_NOEXEC | MS_NODEV | (0 if privileged else MS_RDONLY))
            except OSError:
                pass


def _user_mount(root, m, nodev):
    kind = m.get("type", "bind")
    dest = m["destination"]
    if kind == "tmpfs":
        target = ensure_mountpoint(root, dest, True)
        flags, data = parse_mount_options(m.get("options", ""), ("noexec", "nosuid", "nodev"))
        mount("tmpfs", target, "tmpfs", flags | nodev, data or None)
        return
    source = m["source"]
    target = ensure_mountpoint(root, dest, os.path.isdir(source))
    extra = nodev
    if m.get("flags"):
        extra |= int(m["flags"])
    _bind(source, target, readonly=bool(m.get("readonly")), extra=extra)
    prop = m.get("propagation") or "rprivate"
    prop_flags = {
        "private": MS_PRIVATE,
        "rprivate": MS_PRIVATE | MS_REC,
        "slave": libc.MS_SLAVE,
        "rslave": libc.MS_SLAVE | MS_REC,
        "shared": libc.MS_SHARED,
        "rshared": libc.MS_SHARED | MS_REC,
    }.get(prop)
    if prop_flags:
        try:
            mount(None, target, None, prop_flags)
        except OSError:
            pass


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
