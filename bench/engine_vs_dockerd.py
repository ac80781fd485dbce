"""The dockyard engine against Debian's dockerd, in one run, on the same test host and busybox image.

Measures (a) `docker run --rm busybox true` through the docker CLI, (b) create+start+wait+remove through
docker-py's low-level API (p50/p95 over --runs runs each), (c) idle RSS of the engine (daemon, fork server,
idle helpers) against dockerd + containerd, and their PSS (/proc/PID/smaps_rollup: pages shared between
processes counted once), (d) 50 containers started in parallel through docker-py until all run. Targets:
(a), (b) <= 0.5x dockerd; (c) RSS <= 0.25x (issue 11). (c) is taken fresh after `docker load` (no container
has run: the engine's fork server has not started), right after the runs (the fork server runs), and idle:
after the fork server's quiet period (engine/runtime/forkserver.py IDLE_EXIT, 60 s: the bench waits for its
exit). Then the first `docker run` after that exit is timed (info): it pays the fork server's start.

Both engines run inside one test host's network namespace (bench/peers.py: dockerd from the docker-variant
test rootfs) and are reached the same way: over their unix sockets (the dockyard engine's through
/proc/<host init>/root, dockerd's in a temp dir), no TLS, and every container uses `--network none`, so this
measures container start, not networking.
Run as root: python3 -m bench.engine_vs_dockerd [--runs N]
"""

import argparse
import concurrent.futures
import math
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench.peers import (
    DOCKER_CLI,
    BenchError,
    Peers,
    cmdline,
    docker_cli,
    ns_inode,
    pids,
    status_int,
    wait_until,
)
from dockyard.engine.runtime.forkserver import IDLE_EXIT
from tests.images import busybox_image_id, busybox_tar

TARGETS = {"a": 0.5, "b": 0.5, "c": 0.25}
LABEL = "dockyard.bench"
SLEEP = "299"  # (d)'s containers sleep this long; an unusual number, so their processes can be counted


# ----- helpers --------------------------------------------------------------------------------------

# the names the measurements below were written with (bench/peers.py holds them)
_wait_until, _ns_inode, _cmdline, _status_int, _pids = wait_until, ns_inode, cmdline, status_int, pids


def _pss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _percentile(values, pct):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# ----- the dockyard engine -------------------------------------------------------------------------------


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def engine_processes(host):
    """Everything in the host's pid namespace but its sshd: the daemon, its fork server, helpers."""
    host_pidns = _ns_inode(host.init_pid, "pid")
    return [p for p in _pids() if _ns_inode(p, "pid") == host_pidns and _comm(p) != "sshd"]


# ----- measurements ----------------------------------------------------------------------------------------


def bench_cli_run(url, cli_dir, network=("--network", "none")):
    t0 = time.perf_counter()
    p = docker_cli(url, cli_dir, "run", "--rm", *network, "busybox", "true")
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"docker run --rm busybox true exited {p.returncode}: {p.stderr.strip()}")
    return dt


def bench_api_cycle(api):
    t0 = time.perf_counter()
    cid = api.create_container(
        "busybox", ["true"], labels={LABEL: "cycle"}, host_config=api.create_host_config(network_mode="none")
    )["Id"]
    api.start(cid)
    code = api.wait(cid)["StatusCode"]
    api.remove_container(cid)
    dt = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"busybox true exited {code}")
    return dt


def bench_parallel(client, n, tag):
    """Wall time from issuing n `run -d` at once until n containers are listed running; then remove them."""
    labels = {LABEL: tag}

    def run_one(_):
        return client.containers.run("busybox", ["sleep", SLEEP], detach=True, network_mode="none", labels=labels).id

    t0 = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            ids = list(pool.map(run_one, range(n)))
        _wait_until(
            lambda: len(client.api.containers(quiet=True, filters={"label": f"{LABEL}={tag}"})) >= n,
            120,
            f"{n} containers running",
            step=0.01,
        )
        started = time.perf_counter() - t0
        # outside the timed window: "running" must mean n real processes, not just the engine's word
        real = sum(1 for p in _pids() if _cmdline(p) == f"sleep {SLEEP}")
        if real < n:
            raise BenchError(f"{n} containers listed running but only {real} 'sleep {SLEEP}' processes exist")
    finally:
        t1 = time.perf_counter()
        left = [c["Id"] for c in client.api.containers(all=True, quiet=True, filters={"label": f"{LABEL}={tag}"})]
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(lambda cid: client.api.remove_container(cid, force=True), left))
        removed = time.perf_counter() - t1
    if len(set(ids)) != n:
        raise BenchError(f"expected {n} containers, got {len(set(ids))}")
    return started, removed


def rss_of(pids):
    rows = [(pid, _cmdline(pid)[:70], _status_int(pid, "VmRSS"), _pss_kb(pid)) for pid in pids]
    return sum(r[2] for r in rows), sum(r[3] for r in rows), rows


# ----- main ------------------------------------------------------------------------------------------------


def _fmt_ms(s):
    return f"{s * 1000:.1f}"


def _row(label, ours, theirs, unit_fmt, target=None):
    ratio = ours / theirs if theirs else float("inf")
    if target is None:
        verdict = "(no target)"
    elif ratio <= target:
        verdict = f"<= {target}x  MET"
    else:
        verdict = f"<= {target}x  MISSED by {ratio / target:.2f}x ({ratio - target:+.2f})"
    return f"{label:<44} {unit_fmt(ours):>10} {unit_fmt(theirs):>10} {ratio:>7.2f}x  {verdict}"


def run(args, log):
    import docker

    image = busybox_tar()
    image_id = busybox_image_id(image)
    peers = Peers(log)
    results = {}
    t_start = time.monotonic()
    try:
        peers.start()
        host, dockerd, cli_dir = peers.host, peers.dockerd, peers.cli_dir
        engines = dict(peers.urls)

        clients = {}
        for name, url in engines.items():
            p = docker_cli(url, cli_dir, "load", "-i", str(image), timeout=300)
            if p.returncode != 0:
                raise BenchError(f"docker load into {name} failed: {p.stderr.strip()}")
            clients[name] = docker.DockerClient(
                base_url=url, version="auto", timeout=300, max_pool_size=args.parallel + 4
            )
            got = clients[name].images.get("busybox").id
            if got != image_id:
                raise BenchError(f"{name} has busybox as {got}, expected {image_id}")
            peers.defer(f"{name} containers", lambda c=clients[name]: _remove_all(c))
        versions = {n: c.version() for n, c in clients.items()}

        time.sleep(2)  # settle after the load
        results["rss_fresh"] = {"dockyard": rss_of(engine_processes(host)), "dockerd": rss_of(dockerd.processes())}

        order = list(engines)
        log(f"warm-up; then (a) and (b): {args.runs} runs each, the two engines interleaved")
        for name in order:
            for _ in range(3):
                bench_cli_run(engines[name], cli_dir)
                bench_api_cycle(clients[name].api)
        for key, fn in (
            ("a", lambda n: bench_cli_run(engines[n], cli_dir)),
            ("b", lambda n: bench_api_cycle(clients[n].api)),
        ):
            times = {n: [] for n in order}
            for i in range(args.runs):
                for name in order if i % 2 == 0 else order[::-1]:
                    times[name].append(fn(name))
            results[key] = times
        # context only: dockerd's default network mode (no bridge here) starts faster than --network none
        results["a_dockerd_default"] = [
            bench_cli_run(engines["dockerd"], cli_dir, network=()) for _ in range(min(args.runs, 20))
        ]
        log(f"(d): {args.parallel} containers in parallel, {args.rounds} rounds per engine")
        par = {n: [] for n in order}
        for i in range(args.rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                par[name].append(bench_parallel(clients[name], args.parallel, f"par-{name}-{i}"))
        results["d"] = par
        time.sleep(2)  # settle: no containers left, both idle again
        for name, c in clients.items():
            if c.api.containers(all=True, quiet=True):
                raise BenchError(f"{name} still lists containers after the runs")
        results["rss_after"] = {"dockyard": rss_of(engine_processes(host)), "dockerd": rss_of(dockerd.processes())}
        log(f"(c) idle: waiting for the fork server's idle exit ({IDLE_EXIT:.0f} s without a request)")
        t_idle = time.monotonic()
        _wait_until(
            lambda: not [p for p in engine_processes(host) if _comm(p) == "dockyard-fork"],
            IDLE_EXIT + 60,
            "the fork server's idle exit",
        )
        results["idle_wait"] = time.monotonic() - t_idle
        results["rss_idle"] = {"dockyard": rss_of(engine_processes(host)), "dockerd": rss_of(dockerd.processes())}
        # the price of the idle exit: the next start pays the fork server's interpreter start (info)
        results["a_after_idle"] = [bench_cli_run(engines["dockyard"], cli_dir) for _ in range(2)]
        results["meta"] = {
            "host": host.netns,
            "versions": versions,
            "image": image_id,
            "urls": dict(engines),
            "elapsed": time.monotonic() - t_start,
        }
    finally:
        errors = peers.teardown()
        if errors:
            print("TEARDOWN PROBLEMS:\n  " + "\n  ".join(errors))
        results["teardown_errors"] = errors
    return results


def _remove_all(client):
    for c in client.api.containers(all=True, quiet=True):
        client.api.remove_container(c["Id"], force=True)


def report(args, r):
    v = r["meta"]["versions"]
    comp = {c.get("Name"): c.get("Version") for c in v["dockerd"].get("Components") or []}
    print()
    print(
        f"dockyard engine {v['dockyard'].get('Version')} (API {v['dockyard'].get('ApiVersion')}) vs Debian "
        f"dockerd {v['dockerd'].get('Version')} (API {v['dockerd'].get('ApiVersion')}, containerd "
        f"{comp.get('containerd')}, runc {comp.get('runc')}, overlay2, cgroupfs)"
    )
    print(
        f"same test host {r['meta']['host']}, same busybox image {r['meta']['image'][:19]}..., docker CLI "
        f"{subprocess.run([DOCKER_CLI, '--version'], capture_output=True, text=True).stdout.strip()}, "
        f"docker-py {__import__('docker').__version__}"
    )
    urls = r["meta"]["urls"]
    print("both daemons run in the test host's network namespace (dockerd: nsenter --net + a private mount ns)")
    print(f"transport: unix sockets for both, no TLS: dockyard {urls['dockyard']}, dockerd {urls['dockerd']}")
    print("every container runs with --network none: this compares container start, not networking")
    print()
    print(f"{'metric':<44} {'dockyard':>10} {'dockerd':>10} {'ratio':>8}  target")
    for key, title in (
        ("a", f"(a) docker run --rm busybox true, ms, n={args.runs}"),
        ("b", f"(b) create+start+wait+rm (docker-py), ms, n={args.runs}"),
    ):
        t = r[key]
        print(title)
        for pct in (50, 95):
            ours, theirs = _percentile(t["dockyard"], pct), _percentile(t["dockerd"], pct)
            print(_row(f"      p{pct}", ours, theirs, _fmt_ms, TARGETS[key]))
        print(_row("      mean (info)", statistics.mean(t["dockyard"]), statistics.mean(t["dockerd"]), _fmt_ms))
    mb = lambda kb: f"{kb / 1024:.1f}"  # noqa: E731
    extra = r["a_dockerd_default"]
    print(
        _row(
            f"      p50 vs dockerd's default network (n={len(extra)})",
            statistics.median(r["a"]["dockyard"]),
            statistics.median(extra),
            _fmt_ms,
        )
    )
    print("(c) idle memory, MB (no containers running): RSS (the target) and PSS (shared pages counted once)")
    print(
        f"      idle = {r['idle_wait']:.0f} s after the runs, when the engine's fork server had exited (quiet period)"
    )
    for key, title in (
        ("rss_fresh", "fresh, after docker load"),
        ("rss_after", "right after all the runs"),
        ("rss_idle", "idle, after the quiet period"),
    ):
        ours, theirs = r[key]["dockyard"], r[key]["dockerd"]
        print(_row(f"      RSS {title}", ours[0], theirs[0], mb, TARGETS["c"]))
        print(_row(f"      PSS {title} (info)", ours[1], theirs[1], mb))
    first, warm = r["a_after_idle"]
    print(f"      docker run --rm busybox true after the idle exit (info): first {first * 1000:.1f} ms (starts the")
    p50 = statistics.median(r["a"]["dockyard"]) * 1000
    print(f"      fork server), next {warm * 1000:.1f} ms; (a)'s p50 was {p50:.1f} ms")
    d = r["d"]
    print(f"(d) {args.parallel} x run -d busybox sleep, in parallel, s, median of {args.rounds}")
    print(
        _row(
            "      until all running",
            statistics.median(x[0] for x in d["dockyard"]),
            statistics.median(x[0] for x in d["dockerd"]),
            lambda s: f"{s:.2f}",
        )
    )
    print(
        _row(
            "      removing them (rm -f, parallel; info)",
            statistics.median(x[1] for x in d["dockyard"]),
            statistics.median(x[1] for x in d["dockerd"]),
            lambda s: f"{s:.2f}",
        )
    )
    print(
        f"      rounds: dockyard {[round(x[0], 2) for x in d['dockyard']]}, "
        f"dockerd {[round(x[0], 2) for x in d['dockerd']]}"
    )
    print()
    print("processes counted in (c) (pid; RSS and PSS MB fresh, right after the runs, idle; command):")
    for name in ("dockyard", "dockerd"):
        samples = [{row[0]: row for row in r[key][name][2]} for key in ("rss_fresh", "rss_after", "rss_idle")]
        for pid in sorted(set().union(*samples)):
            cols = []
            for sample in samples:
                row = sample.get(pid)
                cols.append(f"{row[2] / 1024:7.1f} {row[3] / 1024:7.1f}" if row else "      -       -")
            cmd = next(sample[pid][1] for sample in samples if pid in sample)
            print(f"  {name:<8} {pid:>7} {'  '.join(cols)}  {cmd}")
    print(f"\nbenchmark time (host up to results): {r['meta']['elapsed']:.1f} s")


def _interrupt(*_):
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="runs per engine for (a) and (b) (default 50)")
    ap.add_argument("--parallel", type=int, default=50, help="containers started at once in (d) (default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (d) per engine (default 3)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    if args.runs < 1 or args.parallel < 1 or args.rounds < 1:
        raise SystemExit("--runs, --parallel and --rounds must be >= 1")
    # SIGTERM tears down like Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    results = run(args, lambda line: print(line, flush=True))
    report(args, results)
    print(f"total wall time including setup and teardown: {time.monotonic() - t0:.1f} s")
    if results["teardown_errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
