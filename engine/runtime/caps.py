"""Linux capabilities: names, Docker's default set, --cap-add/--cap-drop, and applying a set."""

from dockyard.engine.runtime import libc

NAMES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
NUMBERS = {name: i for i, name in enumerate(NAMES)}

# What Docker grants an unprivileged container.
DEFAULT = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)


class CapabilityError(ValueError):
    """An unknown capability name in --cap-add/--cap-drop."""


def last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return len(NAMES) - 1


def normalize(name):
    """'net_raw', 'CAP_NET_RAW', 'NET_RAW' -> 'NET_RAW'; 'all' -> 'ALL'."""
    up = str(name).strip().upper()
    if up.startswith("CAP_"):
        up = up[4:]
    if up != "ALL" and up not in NUMBERS:
        raise CapabilityError("unknown capability: %r" % name)
    return up


def effective_set(cap_add=None, cap_drop=None, privileged=False):
    """Names granted to the container, as Docker computes them (ALL allowed in both lists)."""
    known = [n for n in NAMES if NUMBERS[n] <= last_cap()]
    if privileged:
        return list(known)
    adds = [normalize(c) for c in (cap_add or [])]
    drops = [normalize(c) for c in (cap_drop or [])]
    if "ALL" in adds:
        base = list(known)
    elif "ALL" in drops:
        base = []
    else:
        base = [c for c in DEFAULT if c not in drops]
    for cap in adds:
        if cap != "ALL" and cap not in base and cap not in drops:
            base.append(cap)
    if "ALL" in adds:
        base = [c for c in base if c not in drops]
    return [c for c in base if c in known]


def mask(names):
    value = 0
    for name in names:
        value |= 1 << NUMBERS[name]
    return value


def drop_bounding(keep_mask):
    """Remove every capability outside keep_mask from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if not keep_mask & (1 << cap):
            try:
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno != 22:  # EINVAL: the kernel does not know this one
                    raise


def apply(keep_mask):
    """Final sets before execve: effective = permitted = keep_mask; inheritable and ambient empty.

    An empty inheritable set is Docker's since CVE-2022-24769: with it set, a non-root user could
    regain the container's capabilities by running a file that carries inheritable file caps."""
    try:
        libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    # Never more than we hold ourselves (--privileged on a host whose bounding set lacks some).
    keep_mask &= libc.capget()[1]
    libc.capset(keep_mask, keep_mask, 0)
