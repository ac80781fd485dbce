"""Throwaway network namespaces for network-part tests: create, run code inside, delete."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from dockyard.engine.network.netns import run_in_netns

REPO = Path(__file__).resolve().parents[2]
# Not "dy-<n>": tests/hosts/netns_host.cleanup_stale owns that pattern.
PREFIX = "dynet-"


class TempNetns:
    """`ip netns add` a namespace with lo up; delete() removes it and kills what runs in it."""

    def __init__(self):
        self.name = "%s%d-%s" % (PREFIX, os.getpid(), uuid.uuid4().hex[:6])
        self.path = "/run/netns/" + self.name
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)

    def run(self, func, *args):
        """func(*args) in a thread inside the namespace (sockets it opens live there)."""
        return run_in_netns(self.path, func, *args)

    def python(self, code, timeout=60):
        """Run python code in a subprocess whose whole network namespace is this one."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run(
            ["nsenter", "--net=" + self.path, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(REPO),
        )

    def sh(self, *argv, check=True):
        return subprocess.run(
            ["nsenter", "--net=" + self.path] + list(argv), capture_output=True, text=True, check=check, timeout=60
        )

    def delete(self):
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def cleanup_stale():
    """Namespaces of earlier crashed runs (their pytest pid is gone)."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if not os.path.exists("/proc/%d" % pid):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
