"""`dockyard create -d generic` until the engine answers over mutual TLS, on a local test host.

Target: <= 0.6 s until the engine answers (issue 11; 5 s before). Three ways, each on a fresh test host:
  cold   machine.create in this process with a new store: the engine bundle is built (and byte-compiled) first,
         as on the first create on a laptop
  warm   the same with the bundle already in the store's cache, as on every later create (the usual case)
  cli    `python3 -m dockyard create -d generic ...` as a user runs it, warm: interpreter start and the CLI's
         imports included; its "engine answers" is when it prints "The engine is up and running!"
Prints the time of each step (from the progress lines; a line is printed when its step starts, so the time
is charged to the line before it) and the medians.
Run as root: python3 -m bench.create_generic [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine
from tests.hosts import netns_host, rootfs

TARGET = 0.6
ENGINE_UP = "The engine is up and running!"
REPO = Path(__file__).resolve().parents[1]


def driver_flags(host) -> dict:
    return {
        "generic_ip_address": host.ip,
        "generic_ssh_key": host.key_path,
        "generic_ssh_user": "root",
        "generic_ssh_port": 22,
        "generic_engine_port": 2376,
    }


def in_process(root, cache: str | None, keep_cache: str | None = None) -> tuple[float, list[tuple[float, str]]]:
    """(seconds until the engine answered, [(seconds, progress line)]) of machine.create with a new store whose
    cache is a copy of `cache` (None: empty); `keep_cache` receives a copy of the cache afterwards."""
    steps: list[tuple[float, str]] = []
    with netns_host.TestHost(root) as host, tempfile.TemporaryDirectory() as store_dir:
        store = Store(store_dir)
        if cache:
            shutil.copytree(cache, store.cache_dir, dirs_exist_ok=True)
        t0 = time.monotonic()
        machine.create(
            store,
            "bench",
            "generic",
            driver_flags(host),
            machine.default_engine_options(),
            [],
            lambda line: steps.append((time.monotonic() - t0, line)),
        )
        total = next((t for t, line in steps if line.startswith(ENGINE_UP)), time.monotonic() - t0)
        if keep_cache:
            shutil.copytree(store.cache_dir, keep_cache, dirs_exist_ok=True)
    return total, steps


def cli(root, cache: str) -> tuple[float, list[tuple[float, str]]]:
    """The same through the CLI in a child process; times from its start."""
    steps: list[tuple[float, str]] = []
    with (
        netns_host.TestHost(root) as host,
        tempfile.TemporaryDirectory() as store_dir,
        tempfile.TemporaryDirectory() as home,
    ):
        shutil.copytree(cache, os.path.join(store_dir, "cache"))
        flags = driver_flags(host)
        argv = [sys.executable, "-m", "dockyard", "-s", store_dir, "create", "-d", "generic", "--no-docker-context"]
        for name, value in flags.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HOME=home, DOCKER_CONFIG=home)
        for var in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKYARD_STORAGE_PATH"):
            env.pop(var, None)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv + ["bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            steps.append((time.monotonic() - t0, line.rstrip("\n")))
        if proc.wait() != 0:
            raise SystemExit("dockyard create failed:\n" + "\n".join(line for _, line in steps))
        steps.append((time.monotonic() - t0, "(the CLI exited)"))
    total = next((t for t, line in steps if line.startswith(ENGINE_UP)), steps[-1][0])
    return total, steps


def print_steps(steps: list[tuple[float, str]]) -> None:
    prev_t, prev = 0.0, "start (python + CLI imports, for cli)"
    for t, line in steps:
        print(f"  {t - prev_t:6.3f} s  {prev}")
        prev_t, prev = t, line
    print(f"  {'':6}    {prev}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    root = rootfs.ensure_rootfs(log=print)
    netns_host.cleanup_stale()
    totals: dict[str, list[float]] = {"cold": [], "warm": [], "cli": []}
    cache = tempfile.mkdtemp(prefix="dockyard-bench-cache-")
    try:
        for i in range(args.runs):
            for kind in totals:
                if kind == "cold":
                    total, steps = in_process(root, None, keep_cache=cache)
                elif kind == "warm":
                    total, steps = in_process(root, cache)
                else:
                    total, steps = cli(root, cache)
                totals[kind].append(total)
                print(f"{kind} run {i + 1}: engine answered after {total:.3f} s")
                print_steps(steps)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print()
    for kind, values in totals.items():
        med = statistics.median(values)
        verdict = "MET" if med <= TARGET else f"MISSED by {med / TARGET:.2f}x"
        print(
            f"create -d generic until the engine answers, {kind:<4}: median {med:.3f} s over {len(values)} runs "
            f"{[round(v, 3) for v in values]}  (target <= {TARGET} s: {verdict})"
        )


if __name__ == "__main__":
    main()
