"""Facts about the host the engine runs on, read from /proc, /sys and /etc (for /info and /version)."""

import os
import platform
import socket

# Go's GOARCH names, which docker clients expect in /version "Arch".
_GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "armv8l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "loongarch64": "loong64",
}

# Backing filesystem names as moby's graphdriver reports them.
_FS_NAMES = {"ext2": "extfs", "ext3": "extfs", "ext4": "extfs", "overlay": "overlayfs"}


def cpu_count():
    """CPUs this process may run on (sched_getaffinity, like Go's runtime.NumCPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mem_total(meminfo="/proc/meminfo"):
    """Total RAM in bytes from /proc/meminfo (0 if unreadable)."""
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    parts = line.split()
                    unit = parts[2].lower() if len(parts) > 2 else "b"
                    return int(parts[1]) * (1024 if unit == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def kernel_version():
    return os.uname().release


def machine():
    return os.uname().machine


def go_arch(name=None):
    name = name or machine()
    return _GO_ARCH.get(name, name)


def hostname():
    return socket.gethostname()


def os_release(paths=("/etc/os-release", "/usr/lib/os-release")):
    """KEY=VALUE pairs of os-release (quotes removed); {} if none is readable."""
    for path in paths:
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        out = {}
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out[key.strip()] = value
        return out
    return {}


def operating_system():
    info = os_release()
    return info.get("PRETTY_NAME") or info.get("NAME") or platform.system()


def _unescape_mount(field):
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(path="/proc/self/mounts"):
    """[(mount_point, fs_type, source)] in mount order."""
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    out.append((_unescape_mount(parts[1]), parts[2], _unescape_mount(parts[0])))
    except OSError:
        pass
    return out


def fs_type(path):
    """Filesystem type holding `path` (or its nearest existing parent); '' if unknown."""
    path = os.path.realpath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    best, best_type = "", ""
    for point, ftype, _ in mounts():
        if path == point or path.startswith(point.rstrip("/") + "/") or point == "/":
            if len(point) >= len(best):  # later mounts on the same point win
                best, best_type = point, ftype
    return best_type


def backing_filesystem(path):
    ftype = fs_type(path)
    return _FS_NAMES.get(ftype, ftype or "unknown")


def cgroup_version(root="/sys/fs/cgroup"):
    """'2' only when `root` itself is cgroup2 (unified); hybrid and legacy layouts are '1'."""
    for point, ftype, _ in reversed(mounts()):
        if point == root:
            return "2" if ftype == "cgroup2" else "1"
    return "1"


def _v2_controllers(root):
    try:
        with open(os.path.join(root, "cgroup.controllers")) as fh:
            return set(fh.read().split())
    except OSError:
        return set()


def cgroup_features(root="/sys/fs/cgroup"):
    """Which resource limits the kernel offers, as /info's MemoryLimit, SwapLimit, ... booleans."""
    if cgroup_version(root) == "2":
        ctrl = _v2_controllers(root)
        return {
            "MemoryLimit": "memory" in ctrl,
            "SwapLimit": "memory" in ctrl and _any_child_has(root, "memory.swap.max"),
            "CpuCfsPeriod": "cpu" in ctrl,
            "CpuCfsQuota": "cpu" in ctrl,
            "CPUShares": "cpu" in ctrl,
            "CPUSet": "cpuset" in ctrl,
            "PidsLimit": "pids" in ctrl,
            "OomKillDisable": False,  # cgroup v2 has no oom_kill_disable
        }
    exists = lambda *p: os.path.exists(os.path.join(root, *p))  # noqa: E731
    return {
        "MemoryLimit": exists("memory", "memory.limit_in_bytes"),
        "SwapLimit": exists("memory", "memory.memsw.limit_in_bytes"),
        "CpuCfsPeriod": exists("cpu", "cpu.cfs_period_us"),
        "CpuCfsQuota": exists("cpu", "cpu.cfs_quota_us"),
        "CPUShares": exists("cpu", "cpu.shares"),
        "CPUSet": exists("cpuset", "cpuset.cpus"),
        "PidsLimit": exists("pids", "cgroup.procs"),  # the root cgroup has no pids.max
        "OomKillDisable": exists("memory", "memory.oom_control"),
    }


def _any_child_has(root, name):
    # memory.swap.max exists only in non-root cgroups; look one level down.
    try:
        for entry in os.scandir(root):
            if entry.is_dir() and os.path.exists(os.path.join(entry.path, name)):
                return True
    except OSError:
        pass
    return False


def ipv4_forwarding():
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


def open_fds():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
