"""`dockyard create -n 5 --engine docker --swarm` on test hosts until `docker node ls` shows all five Ready.

One manager and four workers on five test hosts plugged into one lab switch (tests/hosts/lab.py), created the
way the CLI creates several machines into a new swarm: all at once (the first initializes the swarm, the others
are provisioned alongside it and join once it is up), then the manager's node list is polled until every node
is Ready. Compared with one `create --engine docker` on a sixth host of the same lab. Target: the swarm in
<= 2x the time of one machine. Prints the total, the per-host breakdown and the ratio; asserts nothing.

The hosts are started before the clock starts (they stand for machines a driver has made); the test hosts have
no route out, so dockerd is Debian's docker.io already in their root filesystem.
Run as root: python3 -m bench.swarm_create [--nodes 5] [--runs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from typing import Any

from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import batch, cluster, machine
from dockyard.provisioner.provision import swarm
from tests.hosts import netns_host, rootfs
from tests.hosts.lab import Lab
from tests.hosts.netns_host import TestHost

TARGET = 2.0


def driver_options(host: TestHost) -> dict[str, Any]:
    return {
        "generic_ip_address": host.ip,
        "generic_ssh_key": str(host.key_path),
        "generic_ssh_user": "root",
        "generic_ssh_port": 22,
        "generic_engine_port": 2376,
    }


class Timeline:
    """Progress lines per machine with the time since the clock started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: dict[str, list[tuple[float, str]]] = {}
        self.done: dict[str, float] = {}
        self._lock = threading.Lock()

    def log(self, name: str):
        def log(line: str) -> None:
            with self._lock:
                self.lines.setdefault(name, []).append((time.monotonic() - self.t0, str(line)))

        return log

    def finished(self, name: str) -> None:
        with self._lock:
            self.done[name] = time.monotonic() - self.t0

    def breakdown(self, name: str) -> list[str]:
        """Each step's duration: a progress line is printed when its step starts, so the time up to the next line
        is charged to it."""
        marks = self.lines.get(name, [])
        out = []
        for i, (t, line) in enumerate(marks):
            end = marks[i + 1][0] if i + 1 < len(marks) else self.done.get(name, t)
            out.append(f"    {t:7.2f} s  +{end - t:6.2f} s  {line[:90]}")
        return out


def one_machine(store: Store, host: TestHost, master: bool = False) -> tuple[float, Timeline]:
    """create --engine docker of one machine until its dockerd answers over mutual TLS (with master: and it has
    initialized a one-node swarm, i.e. create --engine docker --swarm-master)."""
    tl = Timeline()
    so = cluster.options_from_flags(
        swarm_flag=False, master=True, manager=False, join=None, opts=(), join_opts=(), classic={}, engine="docker",
        names=["single"],
    ) if master else None  # fmt: skip
    machine.create(
        store, "single", "generic", driver_options(host), machine.default_engine_options(), [], tl.log("single"),
        engine="docker", swarm=so,
    )  # fmt: skip
    tl.finished("single")
    return tl.done["single"], tl


def swarm_of(store: Store, hosts: list[TestHost], limit: int) -> tuple[float, Timeline, float]:
    """create -n N --engine docker --swarm, then wait for N Ready nodes. Returns (total, timeline, creates done)."""
    names = [f"n-{i}" for i in range(1, len(hosts) + 1)]
    by_name = dict(zip(names, hosts))
    so = cluster.options_from_flags(
        swarm_flag=True, master=False, manager=False, join=None, opts=(), join_opts=(), classic={}, engine="docker",
        names=names,
    )  # fmt: skip
    assert so is not None
    per_name = cluster.batch_options(so, names)
    gate = cluster.ManagerGate(names[0])
    tl = Timeline()

    def create_one(name: str, log) -> None:
        lead = name == gate.manager
        with gate.leading() if lead else contextlib.nullcontext():
            machine.create(
                store, name, "generic", driver_options(by_name[name]), machine.default_engine_options(), [],
                tl.log(name), engine="docker", swarm=per_name[name], swarm_ready=None if lead else gate.wait,
            )  # fmt: skip
        tl.finished(name)

    run = batch.Batch(names, create_one, lambda line: None, limit=limit, lead=gate.manager)
    failed = run.run()
    if failed:
        raise SystemExit(run.summary())
    created = time.monotonic() - tl.t0
    manager = machine.Machine.load(store, names[0])
    api = swarm.SwarmAPI(manager.url(), manager.tls_files(), 10)
    while True:
        ready = [n for n in api.nodes() if n.get("Status", {}).get("State") == "ready"]
        if len(ready) == len(names):
            break
        if time.monotonic() - tl.t0 > 600:
            raise SystemExit(f"only {len(ready)} of {len(names)} nodes Ready after 600 s")
        time.sleep(0.2)
    return time.monotonic() - tl.t0, tl, created


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=batch.DEFAULT_CONCURRENCY, help="create's --parallel")
    args = ap.parse_args()
    root = rootfs.ensure_rootfs(log=print, variant="docker")
    netns_host.cleanup_stale()
    singles, masters, swarms = [], [], []
    for run in range(1, args.runs + 1):
        with Lab() as lab:
            hosts = [lab.host(root, f"n{i}") for i in range(1, args.nodes + 1)]
            solo, solo_master = lab.host(root, "single"), lab.host(root, "master")
            with tempfile.TemporaryDirectory() as d:
                single, stl = one_machine(Store(d), solo)
            with tempfile.TemporaryDirectory() as d:
                master, _ = one_machine(Store(d), solo_master, master=True)
            with tempfile.TemporaryDirectory() as d:
                total, tl, created = swarm_of(Store(d), hosts, args.parallel)
        singles.append(single)
        masters.append(master)
        swarms.append(total)
        print(f"run {run}: one create --engine docker {single:.2f} s")
        print("\n".join(stl.breakdown("single")))
        print(f"run {run}: one create --engine docker --swarm-master (a one-node swarm) {master:.2f} s")
        print(
            f"run {run}: create -n {args.nodes} --engine docker --swarm: every create done at {created:.2f} s, "
            f"all {args.nodes} nodes Ready at {total:.2f} s"
        )
        for name in sorted(tl.lines):
            print(f"  {name}: done at {tl.done.get(name, float('nan')):.2f} s")
            print("\n".join(tl.breakdown(name)))
    single, master, total = (statistics.median(x) for x in (singles, masters, swarms))
    print(
        f"create -n {args.nodes} --engine docker --swarm until all Ready: median {total:.2f} s; one create --engine "
        f"docker: median {single:.2f} s; ratio {total / single:.2f}x (target <= {TARGET:.0f}x); against one "
        f"create --engine docker --swarm-master ({master:.2f} s): {total / master:.2f}x"
    )


if __name__ == "__main__":
    main()
