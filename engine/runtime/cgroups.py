"""Container cgroups on v1 (one hierarchy per controller) and v2 (unified): create, limit, join,
freeze, read counters, detect OOM kills and remove.

A container's cgroup is <hierarchy>/<parent>/<container-id> (cgroupfs layout, like dockerd's
/docker/<id>). Hybrid hosts (v1 controllers plus an empty cgroup2 at /sys/fs/cgroup/unified)
are treated as v1: the unified tree carries no controllers there.
"""

import errno
import os
import time

from dockyard.engine.runtime import devicefilter

ROOT = "/sys/fs/cgroup"

# v1 controllers a container joins; others (net_cls, perf_event, ...) stay at the parent's.
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices")
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")

# Docker's default device allow-list for unprivileged containers (cgroup v1 devices controller).
DEFAULT_DEVICE_RULES = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",  # null zero full random urandom
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",  # tty console ptmx pts
    "c 10:200 rwm",  # tun
)
CFS_PERIOD = 100000


class CgroupError(OSError):
    """A cgroup could not be created or configured."""


def _read(path, default=None):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return default


def _write(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


class Layout:
    """Which cgroup hierarchies this host has, detected once from /proc/self/mountinfo."""

    def __init__(self, version, v1=None, v2root=None):
        self.version = version  # "1" or "2"
        self.v1 = dict(v1 or {})  # controller -> mount point
        self.v2root = v2root

    @classmethod
    def detect(cls, root=ROOT, mountinfo="/proc/self/mountinfo"):
        v1, v2root = {}, None
        try:
            with open(mountinfo) as fh:
                lines = fh.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            point, fstype, superopts = fields[4], rfields[0], rfields[2]
            if not (point == root or point.startswith(root.rstrip("/") + "/")):
                continue
            if fstype == "cgroup2":
                if point == root:
                    v2root = point
            elif fstype == "cgroup":
                for opt in superopts.split(","):
                    if opt in V1_CONTROLLERS:
                        v1[opt] = point
        if v2root is not None:
            return cls("2", v2root=v2root)
        return cls("1", v1=v1)

    def available(self):
        if self.version == "2":
            return set((_read(os.path.join(self.v2root, "cgroup.controllers"), "") or "").split())
        return set(self.v1)


_layout = None


def layout():
    global _layout
    if _layout is None:
        _layout = Layout.detect()
    return _layout


def _v1_dirs(lay, rel):
    """{controller: dir}; co-mounted controllers (cpu,cpuacct) share one directory."""
    return {ctrl: os.path.join(point, rel) for ctrl, point in lay.v1.items()}


class Cgroup:
    """The cgroup(s) of one container. `paths` is what gets stored and reloaded."""

    def __init__(self, version, paths):
        self.version = version
        self.paths = dict(paths)  # v1: controller -> dir; v2: {"unified": dir}

    @classmethod
    def for_container(cls, parent, name, lay=None):
        lay = lay or layout()
        rel = os.path.join(parent.strip("/"), name)
        if lay.version == "2":
            return cls("2", {"unified": os.path.join(lay.v2root, rel)})
        return cls("1", _v1_dirs(lay, rel))

    def to_dict(self):
        return {"version": self.version, "paths": self.paths}

    @classmethod
    def from_dict(cls, data):
        if not data:
            return None
        return cls(data.get("version", "1"), data.get("paths", {}))

    def dirs(self):
        """Distinct directories (co-mounted controllers counted once)."""
        seen, out = set(), []
        for path in self.paths.values():
            real = os.path.realpath(os.path.dirname(path)) + "/" + os.path.basename(path)
            if real not in seen:
                seen.add(real)
                out.append(path)
        return out

    def _p(self, ctrl, name):
        if self.version == "2":
            return os.path.join(self.paths["unified"], name)
        base = self.paths.get(ctrl)
        return os.path.join(base, name) if base else None

    # -- creation ------------------------------------------------------------------------
    def create(self, resources=None, privileged=False):
        """mkdir the cgroup(s) (and the parent) and write the limits; CgroupError on failure."""
        resources = resources or {}
        try:
            if self.version == "2":
                self._create_v2()
            else:
                self._create_v1()
            self.set_resources(resources)
            if self.version == "1" and not privileged and "devices" in self.paths:
                self._devices_v1()
            elif self.version == "2" and not privileged:
                self._devices_v2()
        except OSError as exc:
            if isinstance(exc, CgroupError):
                raise
            raise CgroupError(exc.errno or errno.EIO, "cgroup setup failed: %s" % exc) from None

    def _create_v1(self):
        for ctrl, path in self.paths.items():
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            if ctrl == "cpuset" and not (_read(os.path.join(path, "cpuset.cpus"), "") or "").strip():
                _init_cpuset_parent(path)

    def _create_v2(self):
        path = self.paths["unified"]
        root = ROOT
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
        # Enable the controllers from the root down to the parent (no processes live there).
        wanted = [c for c in V2_CONTROLLERS if c in (_read(os.path.join(root, "cgroup.controllers"), "") or "").split()]
        node = root
        for part in os.path.relpath(parent, root).split("/"):
            _enable_v2(node, wanted)
            node = os.path.join(node, part)
        _enable_v2(parent, wanted)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass

    def _devices_v1(self):
        path = self._p("devices", "devices.deny")
        if not path or not os.path.exists(path):
            return
        _write(path, "a")
        allow = self._p("devices", "devices.allow")
        for rule in DEFAULT_DEVICE_RULES:
            _write(allow, rule)

    def _devices_v2(self):
        # cgroup v2 has no devices controller: the same allow-list as an eBPF program (as runc).
        # Fails closed: a container whose device list cannot be enforced does not start.
        try:
            devicefilter.attach(self.paths["unified"], DEFAULT_DEVICE_RULES)
        except OSError as exc:
            raise CgroupError(
                exc.errno or errno.EPERM, "cannot restrict the container's devices (cgroup v2 device filter): %s" % exc
            ) from None

    def set_resources(self, res):
        """Write the limits of a HostConfig-shaped dict (Memory, NanoCpus, CpuShares, PidsLimit...)."""
        memory = int(res.get("Memory") or 0)
        swap = int(res.get("MemorySwap") or 0)
        reservation = int(res.get("MemoryReservation") or 0)
        nano = int(res.get("NanoCpus") or 0)
        period = int(res.get("CpuPeriod") or 0)
        quota = int(res.get("CpuQuota") or 0)
        shares = int(res.get("CpuShares") or 0)
        pids = res.get("PidsLimit")
        cpus = res.get("CpusetCpus") or ""
        mems = res.get("CpusetMems") or ""
        if nano:
            period = period or CFS_PERIOD
            quota = nano * period // 1000000000
        if self.version == "2":
            self._resources_v2(memory, swap, reservation, period, quota, shares, pids, cpus, mems)
        else:
            self._resources_v1(memory, swap, reservation, period, quota, shares, pids, cpus, mems)

    def _resources_v1(self, memory, swap, reservation, period, quota, shares, pids, cpus, mems):
        if memory:
            _write(self._p("memory", "memory.limit_in_bytes"), memory)
            memsw = self._p("memory", "memory.memsw.limit_in_bytes")
            if memsw and os.path.exists(memsw):
                # Docker: MemorySwap 0 means "as much swap as memory" (total 2x), -1 unlimited.
                total = -1 if swap == -1 else (swap if swap > 0 else 2 * memory)
                _write(memsw, total)
        if reservation:
            _write(self._p("memory", "memory.soft_limit_in_bytes"), reservation)
        if shares:
            _write(self._p("cpu", "cpu.shares"), shares)
        if period:
            _write(self._p("cpu", "cpu.cfs_period_us"), period)
        if quota:
            _write(self._p("cpu", "cpu.cfs_quota_us"), quota)
        if pids is not None and int(pids) > 0 and self._p("pids", "pids.max"):
            _write(self._p("pids", "pids.max"), int(pids))
        if cpus:
            _write(self._p("cpuset", "cpuset.cpus"), cpus)
        if mems:
            _write(self._p("cpuset", "cpuset.mems"), mems)

    def _resources_v2(self, memory, swap, reservation, period, quota, shares, pids, cpus, mems):
        if memory:
            _write(self._p(None, "memory.max"), memory)
            swap_file = self._p(None, "memory.swap.max")
            if os.path.exists(swap_file):
                if swap == -1:
                    _write(swap_file, "max")
                else:
                    _write(swap_file, max(0, (swap if swap > 0 else 2 * memory) - memory))
        if reservation:
            _write(self._p(None, "memory.low"), reservation)
        if shares:
            # runc's conversion of cpu.shares [2, 262144] to cpu.weight [1, 10000].
            _write(self._p(None, "cpu.weight"), 1 + ((max(2, shares) - 2) * 9999) // 262142)
        if quota or period:
            _write(self._p(None, "cpu.max"), "%s %d" % (quota if quota > 0 else "max", period or CFS_PERIOD))
        if pids is not None and int(pids) > 0:
            _write(self._p(None, "pids.max"), int(pids))
        if cpus:
            _write(self._p(None, "cpuset.cpus"), cpus)
        if mems:
            _write(self._p(None, "cpuset.mems"), mems)

    # -- membership -----------------------------------------------------------------------
    def join(self, pid=0):
        """Move `pid` (0: the calling process) into every hierarchy."""
        for path in self.dirs():
            _write(os.path.join(path, "cgroup.procs"), pid)

    def pids(self):
        out = set()
        for path in self.dirs():
            text = _read(os.path.join(path, "cgroup.procs"))
            if text:
                out.update(int(p) for p in text.split())
            if self.version == "2" or text is not None:
                break  # one hierarchy is enough: every process joins all of them
        return sorted(out)

    def exists(self):
        return any(os.path.isdir(p) for p in self.dirs())

    # -- pause ------------------------------------------------------------------------------
    def freeze(self, frozen=True, timeout=5.0):
        if self.version == "2":
            _write(self._p(None, "cgroup.freeze"), "1" if frozen else "0")
            want = "frozen 1" if frozen else "frozen 0"
            events = self._p(None, "cgroup.events")
        else:
            path = self._p("freezer", "freezer.state")
            if not path:
                raise CgroupError(errno.ENOTSUP, "no freezer cgroup on this host")
            _write(path, "FROZEN" if frozen else "THAWED")
            want, events = ("FROZEN" if frozen else "THAWED"), path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _read(events, "") or ""
            if want in text:
                return
            time.sleep(0.002)
        raise CgroupError(errno.ETIMEDOUT, "cgroup did not become %s" % want)

    # -- accounting -------------------------------------------------------------------------
    def oom_kills(self):
        """How many processes the OOM killer took from this cgroup (0 if unknown)."""
        if self.version == "2":
            text = _read(self._p(None, "memory.events"), "") or ""
        else:
            path = self._p("memory", "memory.oom_control")
            text = _read(path, "") if path else ""
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    def memory_failcnt(self):
        path = self._p("memory", "memory.failcnt") if self.version == "1" else None
        try:
            return int((_read(path, "0") or "0").strip()) if path else 0
        except ValueError:
            return 0

    def stats(self):
        """Raw counters: dict with cpu_total_ns, cpu_percpu, memory_usage, memory_limit,
        memory_stat (dict), pids_current, pids_limit, io (list of (op, major, minor, value))."""
        if self.version == "2":
            return self._stats_v2()
        return self._stats_v1()

    def _stats_v1(self):
        out = {}
        usage = _read(self._p("cpuacct", "cpuacct.usage") or "", None)
        out["cpu_total_ns"] = int(usage.strip()) if usage and usage.strip().isdigit() else 0
        percpu = _read(self._p("cpuacct", "cpuacct.usage_percpu") or "", "") or ""
        out["cpu_percpu"] = [int(x) for x in percpu.split() if x.isdigit()]
        stat = _read(self._p("cpuacct", "cpuacct.stat") or "", "") or ""
        kv = _kv(stat)
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        out["cpu_user_ns"] = kv.get("user", 0) * 1000000000 // hz
        out["cpu_system_ns"] = kv.get("system", 0) * 1000000000 // hz
        cpustat = _kv(_read(self._p("cpu", "cpu.stat") or "", "") or "")
        out["throttling"] = {
            "periods": cpustat.get("nr_periods", 0),
            "throttled_periods": cpustat.get("nr_throttled", 0),
            "throttled_time": cpustat.get("throttled_time", 0),
        }
        out["memory_usage"] = _int_file(self._p("memory", "memory.usage_in_bytes"))
        out["memory_max_usage"] = _int_file(self._p("memory", "memory.max_usage_in_bytes"))
        out["memory_failcnt"] = _int_file(self._p("memory", "memory.failcnt"))
        out["memory_limit"] = _int_file(self._p("memory", "memory.limit_in_bytes"))
        out["memory_stat"] = _kv(_read(self._p("memory", "memory.stat") or "", "") or "")
        out["pids_current"] = _int_file(self._p("pids", "pids.current"))
        limit = (_read(self._p("pids", "pids.max") or "", "") or "").strip()
        out["pids_limit"] = int(limit) if limit.isdigit() else 0
        io = []
        for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.io_service_bytes_recursive"):
            text = _read(self._p("blkio", name) or "", None)
            if text:
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) == 3 and ":" in parts[0]:
                        major, minor = parts[0].split(":")
                        io.append((parts[1].lower(), int(major), int(minor), int(parts[2])))
                break
        out["io"] = io
        return out

    def _stats_v2(self):
        out = {}
        cpustat = _kv(_read(self._p(None, "cpu.stat"), "") or "")
        out["cpu_total_ns"] = cpustat.get("usage_usec", 0) * 1000
        out["cpu_percpu"] = []
        out["cpu_user_ns"] = cpustat.get("user_usec", 0) * 1000
        out["cpu_system_ns"] = cpustat.get("system_usec", 0) * 1000
        out["throttling"] = {
            "periods": cpustat.get("nr_periods", 0),
            "throttled_periods": cpustat.get("nr_throttled", 0),
            "throttled_time": cpustat.get("throttled_usec", 0) * 1000,
        }
        out["memory_usage"] = _int_file(self._p(None, "memory.current"))
        out["memory_max_usage"] = _int_file(self._p(None, "memory.peak"))
        out["memory_failcnt"] = 0
        limit = (_read(self._p(None, "memory.max"), "") or "").strip()
        out["memory_limit"] = int(limit) if limit.isdigit() else 0
        out["memory_stat"] = _kv(_read(self._p(None, "memory.stat"), "") or "")
        out["pids_current"] = _int_file(self._p(None, "pids.current"))
        limit = (_read(self._p(None, "pids.max"), "") or "").strip()
        out["pids_limit"] = int(limit) if limit.isdigit() else 0
        io = []
        for line in (_read(self._p(None, "io.stat"), "") or "").splitlines():
            parts = line.split()
            if not parts or ":" not in parts[0]:
                continue
            major, minor = parts[0].split(":")
            kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            io.append(("read", int(major), int(minor), int(kv.get("rbytes", 0))))
            io.append(("write", int(major), int(minor), int(kv.get("wbytes", 0))))
        out["io"] = io
        return out

    # -- removal -------------------------------------------------------------------------------
    def remove(self, timeout=2.0):
        """rmdir every directory; waits (bounded) for exiting processes to leave. True if gone."""
        deadline = time.monotonic() + timeout
        remaining = list(self.paths.values())
        while remaining:
            left = []
            for path in remaining:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        left.append(path)
            remaining = left
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        return not remaining

    def kill_all(self, sig=9):
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def _enable_v2(node, controllers):
    current = set((_read(os.path.join(node, "cgroup.subtree_control"), "") or "").split())
    for ctrl in controllers:
        if ctrl not in current:
            try:
                _write(os.path.join(node, "cgroup.subtree_control"), "+" + ctrl)
            except OSError:
                pass  # e.g. a threaded subtree or a controller the parent lacks


def _init_cpuset_parent(parent):
    """A new v1 cpuset cgroup starts empty: copy cpus/mems down from the hierarchy root and let
    children inherit them (cgroup.clone_children), or no task could ever join. The hierarchy's
    root itself is never written."""
    chain = []
    node = parent
    while os.path.exists(os.path.join(os.path.dirname(node), "cpuset.cpus")):
        chain.append(node)  # below the root: ours to configure
        node = os.path.dirname(node)
    for node in reversed(chain):
        up = os.path.dirname(node)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (_read(os.path.join(node, name), "") or "").strip():
                theirs = (_read(os.path.join(up, name), "") or "").strip()
                if theirs:
                    _write(os.path.join(node, name), theirs)
        try:
            _write(os.path.join(node, "cgroup.clone_children"), "1")
        except OSError:
            pass


def _int_file(path):
    if not path:
        return 0
    text = (_read(path, "") or "").strip()
    try:
        return int(text)
    except ValueError:
        return 0


def _kv(text):
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def remove_parent(parent, lay=None):
    """rmdir <hierarchy>/<parent> everywhere (tests; only succeeds once it is empty)."""
    lay = lay or layout()
    if lay.version == "2":
        targets = [os.path.join(lay.v2root, parent.strip("/"))]
    else:
        targets = sorted({os.path.join(p, parent.strip("/")) for p in lay.v1.values()})
    ok = True
    for path in targets:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
    return ok
