"""`dockyard ls` over 100 `none` machines, 10 of which point at 127.0.0.x listeners that accept and never answer.

Target: ls returns within --timeout + 1 s (dead hosts must not add up). Prints the wall time and its ratio
to the target. Run: python3 -m bench.ls_timeout [--timeout 2]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--timeout", type=int, default=2)
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--dead", type=int, default=10)
    args = ap.parse_args()
    listeners = []
    for i in range(args.dead):
        s = socket.socket()
        s.bind((f"127.0.0.{i + 2}", 0))
        s.listen(64)  # accepted by the kernel, never answered
        listeners.append(s)
    with tempfile.TemporaryDirectory() as d:
        store = Store(d)
        quiet = lambda line: None  # noqa: E731
        for i in range(args.machines):
            if i < args.dead:
                host, port = listeners[i].getsockname()
                url = f"tcp://{host}:{port}"
            else:
                url = "tcp://127.0.0.1:9"  # refused at once
            machine.create(store, f"m{i}", "none", {"url": url}, machine.default_engine_options(), [], quiet)
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        t0 = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "dockyard", "-s", d, "ls", "--timeout", str(args.timeout)],
            capture_output=True,
            text=True,
            env=env,
        )
        elapsed = time.monotonic() - t0
    rows = p.stdout.splitlines()[1:]
    timeouts = sum(1 for r in rows if " Timeout " in f" {r} ")
    target = args.timeout + 1
    print(
        f"ls over {len(rows)} machines ({timeouts} Timeout rows, {args.dead} dead hosts): {elapsed:.2f} s; "
        f"target <= {target} s -> {elapsed / target:.2f}x of the target (exit {p.returncode})"
    )


if __name__ == "__main__":
    main()
