"""`dockyard create -d generic` until the engine answers over mutual TLS, on a local test host.

Target: <= 5 s in total. Prints the time of each step (taken from the progress lines) and the total.
Run as root: python3 -m bench.create_generic [--runs N]
"""

import argparse
import statistics
import tempfile
import time

from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine
from tests.hosts import netns_host, rootfs


def one_run(root):
    steps = []
    last = [time.monotonic()]

    def log(line):
        now = time.monotonic()
        steps.append((now - last[0], line))
        last[0] = now

    with netns_host.TestHost(root) as host, tempfile.TemporaryDirectory() as store_dir:
        store = Store(store_dir)
        t0 = time.monotonic()
        last[0] = t0
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
            machine.default_engine_options(),
            [],
            log,
        )
        total = time.monotonic() - t0
    return total, steps


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = rootfs.ensure_rootfs(log=print)
    netns_host.cleanup_stale()
    totals = []
    for i in range(args.runs):
        total, steps = one_run(root)
        totals.append(total)
        print(f"run {i + 1}: total {total:.2f} s")
        # each progress line is printed when its step starts: the time is charged to the previous line
        prev = "start"
        for dt, line in steps:
            print(f"  {dt:6.3f} s  {prev}")
            prev = line
    med = statistics.median(totals)
    print(
        f"create -d generic until the engine answers: median {med:.2f} s over {len(totals)} runs "
        f"(target <= 5 s: {med / 5.0:.2f}x of the target)"
    )


if __name__ == "__main__":
    main()
