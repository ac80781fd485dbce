"""`docker stats` and `docker top` data: cgroup counters shaped as dockerd's StatsResponse,
network counters from the container's /proc/<pid>/net/dev, processes from ps or /proc."""

import os
import subprocess
import time

from dockyard.engine import hostinfo
from dockyard.engine.runtime.cgroups import Cgroup
from dockyard.engine.timefmt import rfc3339nano_ns

ZERO_TIME = "0001-01-01T00:00:00Z"
_V1_UNLIMITED = 1 << 62


def system_cpu_ns():
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("cpu "):
                    ticks = sum(int(x) for x in line.split()[1:8])
                    return ticks * 1000000000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return 0


def net_dev(pid):
    out = {}
    if not pid:
        return out
    try:
        with open("/proc/%d/net/dev" % pid) as fh:
            lines = fh.read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        vals = rest.split()
        if name == "lo" or len(vals) < 16:
            continue
        v = [int(x) for x in vals]
        out[name] = {
            "rx_bytes": v[0],
            "rx_packets": v[1],
            "rx_errors": v[2],
            "rx_dropped": v[3],
            "tx_bytes": v[8],
            "tx_packets": v[9],
            "tx_errors": v[10],
            "tx_dropped": v[11],
        }
    return out


def _cpu_block(raw, online):
    usage = {
        "total_usage": raw.get("cpu_total_ns", 0),
        "usage_in_kernelmode": raw.get("cpu_system_ns", 0),
        "usage_in_usermode": raw.get("cpu_user_ns", 0),
    }
    if raw.get("cpu_percpu"):
        usage["percpu_usage"] = raw["cpu_percpu"]
    return {
        "cpu_usage": usage,
        "system_cpu_usage": system_cpu_ns(),
        "online_cpus": online,
        "throttling_data": raw.get("throttling") or {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def _empty_cpu():
    return {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def sample(c):
    cg = Cgroup.from_dict(c.state.get("Cgroup")) if c.running else None
    raw = cg.stats() if cg is not None else {}
    return raw, time.time_ns()


def build(c, raw, ts, prev=None, prev_ts=None):
    """One StatsResponse from a raw sample (and the previous one for precpu_stats)."""
    online = hostinfo.cpu_count()
    if not c.running or not raw:
        return {
            "read": ZERO_TIME,
            "preread": ZERO_TIME,
            "pids_stats": {},
            "blkio_stats": {
                "io_service_bytes_recursive": None,
                "io_serviced_recursive": None,
                "io_queue_recursive": None,
                "io_service_time_recursive": None,
                "io_wait_time_recursive": None,
                "io_merged_recursive": None,
                "io_time_recursive": None,
                "sectors_recursive": None,
            },
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": _empty_cpu(),
            "precpu_stats": _empty_cpu(),
            "memory_stats": {},
            "name": "/" + c.name,
            "id": c.id,
        }
    limit = raw.get("memory_limit", 0)
    total = hostinfo.mem_total()
    if not limit or limit >= _V1_UNLIMITED or (total and limit > total):
        limit = total
    memory = {"usage": raw.get("memory_usage", 0), "stats": raw.get("memory_stat", {}), "limit": limit}
    if c.record and raw.get("memory_max_usage"):
        memory["max_usage"] = raw["memory_max_usage"]
    if raw.get("memory_failcnt"):
        memory["failcnt"] = raw["memory_failcnt"]
    io = [
        {"major": ma, "minor": mi, "op": op.capitalize() if op in ("read", "write") else op, "value": val}
        for op, ma, mi, val in raw.get("io", [])
    ]
    out = {
        "read": rfc3339nano_ns(ts),
        "preread": rfc3339nano_ns(prev_ts) if prev_ts else ZERO_TIME,
        "pids_stats": {"current": raw.get("pids_current", 0)},
        "blkio_stats": {
            "io_service_bytes_recursive": io or None,
            "io_serviced_recursive": None,
            "io_queue_recursive": None,
            "io_service_time_recursive": None,
            "io_wait_time_recursive": None,
            "io_merged_recursive": None,
            "io_time_recursive": None,
            "sectors_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu_block(raw, online),
        "precpu_stats": prev if prev is not None else _empty_cpu(),
        "memory_stats": memory,
        "name": "/" + c.name,
        "id": c.id,
    }
    if raw.get("pids_limit"):
        out["pids_stats"]["limit"] = raw["pids_limit"]
    nets = net_dev(c.state.get("Pid") if c.running else 0)
    if nets:
        out["networks"] = nets
    return out


def top(c, ps_args):
    """{'Titles': [...], 'Processes': [[...]]} for the container's processes."""
    cg = Cgroup.from_dict(c.state.get("Cgroup"))
    pids = set(cg.pids()) if cg is not None else set()
    if c.state.get("Pid"):
        pids.add(int(c.state["Pid"]))
    args = (ps_args or "-ef").split()
    try:
        proc = subprocess.run(["ps"] + args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        proc = None
    if proc is None or proc.returncode != 0:
        if proc is not None and ps_args:
            raise ValueError("Error running ps: %s" % (proc.stderr.strip() or "exit status %d" % proc.returncode))
        return _top_from_proc(sorted(pids))
    lines = proc.stdout.splitlines()
    if not lines:
        return {"Titles": [], "Processes": []}
    titles = lines[0].split()
    try:
        pid_col = titles.index("PID")
    except ValueError:
        raise ValueError("Couldn't find PID field in ps output") from None
    processes = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= pid_col:
            continue
        try:
            pid = int(fields[pid_col])
        except ValueError:
            continue
        if pid in pids:
            processes.append(fields)
    return {"Titles": titles, "Processes": processes}


def _top_from_proc(pids):
    rows = []
    for pid in pids:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            with open("/proc/%d/stat" % pid) as fh:
                ppid = fh.read().rsplit(")", 1)[1].split()[1]
            uid = os.stat("/proc/%d" % pid).st_uid
        except (OSError, IndexError):
            continue
        rows.append([str(uid), str(pid), ppid, cmd])
    return {"Titles": ["UID", "PID", "PPID", "CMD"], "Processes": rows}
