"""The dockyard engine against Debian's dockerd, in one run, on the same test host and busybox image.

Measures (a) `docker run --rm busybox true` through the docker CLI, (b) create+start+wait+remove through
docker-py's low-level API (p50/p95 over --runs runs each), (c) idle RSS of the engine (daemon, fork server,
idle helpers) against dockerd + containerd, (d) 50 containers started in parallel through docker-py until
all run. Targets: (a), (b) <= 0.5x dockerd; (c) <= 0.3x.

Both engines run inside one test host's network namespace and are reached the same way: over their unix
sockets (the dockyard engine's through /proc/<host init>/root, dockerd's in a temp dir), no TLS, and every
container uses `--network none`, so this measures container start, not networking.
Run as root: python3 -m bench.engine_vs_dockerd [--runs N]
"""

import argparse
import concurrent.futures
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine
from tests.hosts import netns_host, rootfs
from tests.images import busybox_image_id, busybox_tar

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TARGETS = {"a": 0.5, "b": 0.5, "c": 0.3}
LABEL = "dockyard.bench"
SLEEP = "299"  # (d)'s containers sleep this long; an unusual number, so their processes can be counted


class BenchError(RuntimeError):
    """The benchmark could not set up or measure something."""


# ----- helpers --------------------------------------------------------------------------------------


def _die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _wait_until(pred, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def _ns_inode(pid, kind):
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _status_int(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pids():
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _pids_in_netns(netns):
    ino = os.stat(f"/run/netns/{netns}").st_ino
    return [p for p in _pids() if _ns_inode(p, "net") == ino]


def _percentile(values, pct):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _clean_env(extra):
    env = {"PATH": SYS_PATH, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def _remove_cgroup_tree(name):
    """Kill what is left in <hierarchy>/<name> and rmdir it, deepest first, in every hierarchy."""
    trees = [p for p in Path("/sys/fs/cgroup").glob(f"*/{name}") if p.is_dir()]
    for _ in range(50):
        left = False
        for tree in trees:
            if not tree.exists():
                continue
            dirs = sorted((d for d, _, _ in os.walk(tree)), key=len, reverse=True)
            for d in dirs:
                try:
                    for pid in Path(d, "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                try:
                    os.rmdir(d)
                except OSError:
                    left = True
        if not left:
            return
        time.sleep(0.1)
    raise BenchError(f"cgroup {name} could not be removed")


# ----- Debian's dockerd inside the test host ----------------------------------------------------------


def ensure_docker_io(log):
    """apt-get install docker.io unless dockerd is there; a policy-rc.d keeps its services from starting."""
    if os.path.exists(DOCKERD):
        return
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = _clean_env({"DEBIAN_FRONTEND": "noninteractive"})
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "docker.io"]
    try:
        log("installing docker.io (apt-get; its services are not started)")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:  # stale package lists: refresh once, then retry
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise BenchError(f"apt-get install docker.io failed:\n{proc.stderr[-2000:]}")
    finally:
        if ours:
            policy.unlink()
    started = [p for p in _pids() if _cmdline(p).split(" ")[0] in (DOCKERD, "/usr/bin/containerd")]
    if started:
        raise BenchError(f"installing docker.io started daemons (pids {started}); stop them first")


class Dockerd:
    """dockerd (+ the containerd it manages) in the test host's network namespace, under a temp dir.

    A private mount namespace (with its own /run) keeps its mounts and runtime files out of the
    machine's; --bridge=none and no iptables/ip-forward/masquerading, so it adds no device or rule anywhere.
    """

    def __init__(self, host):
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix="dyb-", dir="/tmp"))  # short: unix socket paths
        self.sock = str(self.dir / "docker.sock")
        self.cgroup_parent = "dockyard-bench-dockerd-" + uuid.uuid4().hex[:8]
        self.proc = None
        self._log = None

    @property
    def url(self):
        return "unix://" + self.sock

    def start(self, timeout=60):
        # the trust key 20.10 writes goes to the temp dir, not /etc/docker (a daemon.json-only setting)
        (self.dir / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.dir / "key.json")}))
        for sub in ("data", "exec"):
            (self.dir / sub).mkdir()
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.host.netns}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            # dockerd and containerd hard-code /run/docker and /run/containerd/s: a private /run
            "/bin/sh",
            "-c",
            'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && exec "$@"',
            "sh",
            DOCKERD,
            "--config-file",
            str(self.dir / "daemon.json"),
            "--data-root",
            str(self.dir / "data"),
            "--exec-root",
            str(self.dir / "exec"),
            "-H",
            self.url,
            "--pidfile",
            str(self.dir / "dockerd.pid"),
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            "--cgroup-parent",
            "/" + self.cgroup_parent,
        ]
        self._log = open(self.dir / "dockerd.log", "ab")
        # nsenter, unshare (without --fork) and sh all exec, so this PID is dockerd's
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_clean_env({"HOME": str(self.dir)}),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

        def up():
            if self.proc.poll() is not None:
                raise BenchError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(self.sock)
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    return s.recv(64).startswith(b"HTTP/1.0 200") or None
            except OSError:
                return None

        try:
            _wait_until(up, timeout, "dockerd to answer /_ping")
        except BenchError as e:
            raise BenchError(f"{e}\n{self.log_tail()}") from None

    def log_tail(self, n=3000):
        try:
            return (self.dir / "dockerd.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _host_ids(self):
        """(the host's pid namespace, the PID of the host's launcher), both outside dockerd's world."""
        try:
            init = self.host.init_pid
            return _ns_inode(init, "pid"), _status_int(init, "PPid")
        except Exception:  # host already gone: whatever is left in its netns is dockerd's
            return None, None

    def _ours(self, host_ids):
        host_pidns, launcher = host_ids
        return [p for p in _pids_in_netns(self.host.netns) if _ns_inode(p, "pid") != host_pidns and p != launcher]

    def processes(self):
        """dockerd's world: the host's netns outside the host's pid namespace (dockerd, containerd, shims)."""
        return self._ours(self._host_ids())

    def stop(self):
        errors = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                errors.append("dockerd ignored SIGTERM for 30 s; killed")
        if self.host.netns and os.path.exists(f"/run/netns/{self.host.netns}"):
            host_ids = self._host_ids()
            for _ in range(100):
                left = self._ours(host_ids)
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            else:
                errors.append(f"processes of dockerd survive SIGKILL: {left}")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log:
            self._log.close()
        mounts = [
            ln.split()[4]
            for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if ln.split()[4].startswith(str(self.dir))
        ]
        if mounts:
            errors.append(f"mounts left under {self.dir}: {mounts}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            _remove_cgroup_tree(self.cgroup_parent)
        except BenchError as e:
            errors.append(str(e))
        if errors:
            raise BenchError("; ".join(errors))


# ----- the dockyard engine -------------------------------------------------------------------------------


def provision_engine(host, store, cgroup_parent, log):
    opts = machine.default_engine_options()
    # local pulls only: the benchmark never reaches a registry; own cgroup parent so it can be removed
    opts["ArbitraryFlags"] = [f"cgroup-parent={cgroup_parent}", "registry-pull=local"]
    machine.create(
        store,
        "bench",
        "generic",
        {
            "generic_ip_address": host.ip,
            "generic_ssh_key": host.key_path,
            "generic_ssh_user": "root",
            "generic_ssh_port": 22,
            "generic_engine_port": 2376,
        },
        opts,
        [],
        log,
    )
    return "unix://" + str(host.rootfs_dir / "run/dockyard/engine.sock")


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


def docker_cli(url, cli_dir, *args, timeout=120):
    env = _clean_env({"DOCKER_HOST": url, "HOME": cli_dir, "DOCKER_CONFIG": cli_dir})
    return subprocess.run([DOCKER_CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


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

    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        os.environ.pop(var, None)
    ensure_docker_io(log)
    root = rootfs.ensure_rootfs(log=log)
    image = busybox_tar()
    image_id = busybox_image_id(image)
    netns_host.cleanup_stale()
    engine_cgroup = "dockyard-bench-" + uuid.uuid4().hex[:8]
    cleanup, results = [], {}
    t_start = time.monotonic()
    try:
        # cleanup runs in reverse: containers, dockerd, temp dirs, the host, then the engine's cgroups
        cleanup.append(("engine cgroups", lambda: _remove_cgroup_tree(engine_cgroup)))
        host = netns_host.TestHost(root, name="bench")
        cleanup.append(("test host", host.teardown))
        host.start()
        store_dir = tempfile.mkdtemp(prefix="dockyard-bench-store-")
        cleanup.append(("store", lambda: shutil.rmtree(store_dir, ignore_errors=True)))
        cli_dir = tempfile.mkdtemp(prefix="dockyard-bench-cli-")
        cleanup.append(("cli dir", lambda: shutil.rmtree(cli_dir, ignore_errors=True)))
        log(f"test host {host.netns} at {host.ip}; provisioning the dockyard engine")
        engines = {"dockyard": provision_engine(host, Store(store_dir), engine_cgroup, lambda line: None)}
        log("starting Debian's dockerd in the test host's network namespace")
        dockerd = Dockerd(host)
        cleanup.append(("dockerd", dockerd.stop))
        dockerd.start()
        engines["dockerd"] = dockerd.url

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
            cleanup.append((f"{name} containers", lambda c=clients[name]: _remove_all(c)))
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
        results["meta"] = {
            "host": host.netns,
            "versions": versions,
            "image": image_id,
            "urls": dict(engines),
            "elapsed": time.monotonic() - t_start,
        }
    finally:
        errors = []
        for what, fn in reversed(cleanup):
            try:
                fn()
            except Exception as e:  # keep tearing down
                errors.append(f"{what}: {e}")
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
    print("(c) idle RSS, MB (no containers running)")
    for key, title in (("rss_fresh", "      fresh, after docker load"), ("rss_after", "      after all the runs")):
        ours, theirs = r[key]["dockyard"], r[key]["dockerd"]
        print(_row(title, ours[0], theirs[0], mb, TARGETS["c"]))
    ours, theirs = r["rss_after"]["dockyard"], r["rss_after"]["dockerd"]
    print(_row("      PSS after the runs (info)", ours[1], theirs[1], mb))
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
    print("idle processes counted in (c) (pid, RSS MB fresh, after the runs, PSS MB after the runs, command):")
    for name in ("dockyard", "dockerd"):
        fresh = {row[0]: row[2] for row in r["rss_fresh"][name][2]}
        for pid, cmd, rss, pss in r["rss_after"][name][2]:
            before = f"{fresh[pid] / 1024:7.1f}" if pid in fresh else "      -"
            print(f"  {name:<8} {pid:>7} {before} {rss / 1024:7.1f} {pss / 1024:7.1f}  {cmd}")
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
