"""A container's network endpoints across stop and restart, against a real engine in its own network namespace
(tests/engine/runtime_helper.py): as with dockerd, `docker stop` returns once the container's endpoints are
released, and a restart never races the old run's veth deletion (the new run reuses the same names)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("docker"), reason="needs root and the docker CLI")
pytest.importorskip("pyroute2")


def _engine_links(eng):
    out = subprocess.run(
        ["nsenter", "-t", str(eng.proc.proc.pid), "-n", "ip", "-o", "link", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _veths_of(eng, cid):
    return {name for name in _engine_links(eng) if name.startswith("veth" + cid[:9])}


def test_stop_returns_with_the_endpoints_released_and_restarts_reuse_them(eng):
    d = eng.docker
    d("network", "create", "--subnet", "10.77.0.0/24", "rsa")
    d("network", "create", "--subnet", "10.78.0.0/24", "rsb")
    cid = d("run", "-d", "--name", "rs", "--network", "rsa", "busybox", "sleep", "300").stdout.strip()
    try:
        d("network", "connect", "rsb", "rs")
        assert len(_veths_of(eng, cid)) == 2
        d("stop", "-t", "0", "rs")
        assert _veths_of(eng, cid) == set()  # released before stop returned, not some time later
        d("start", "rs")
        for _ in range(8):  # each restart reuses the veth names the previous run's exit releases
            d("restart", "-t", "0", "rs")
            assert len(_veths_of(eng, cid)) == 2
            routes = d("exec", "rs", "ip", "-o", "addr", "show").stdout
            assert "10.77.0." in routes and "10.78.0." in routes
    finally:
        d("rm", "-f", "rs", check=False)
        d("network", "rm", "rsa", "rsb", check=False)
