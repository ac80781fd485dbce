"""Batch create: names from -n, bounded concurrency, prefixed progress, one failure spoils nothing else."""

import threading

import pytest

from dockyard.provisioner.core.errors import DockyardError, InvalidHostname, UsageError
from dockyard.provisioner.machines import batch
from tests.integration.conftest import Dockyard


def test_expand_names():
    assert batch.expand_names(["worker"], 3) == ["worker-1", "worker-2", "worker-3"]
    assert batch.expand_names(["a", "b"]) == ["a", "b"]
    assert batch.expand_names(["a", "b"], 2) == ["a-1", "a-2", "b-1", "b-2"]
    with pytest.raises(UsageError, match='"a" given twice'):
        batch.expand_names(["a", "a"])
    with pytest.raises(InvalidHostname):
        batch.expand_names(["bad name"])


def test_bounded_concurrency_prefixed_lines_and_summary():
    limit = 3
    barrier = threading.Barrier(limit, timeout=60)
    lock = threading.Lock()
    active, peak, lines = [0], [0], []

    def action(name, log):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            log(f"working on {name}")
            barrier.wait()  # passes only when `limit` actions run at the same time
            if name == "m-4":
                raise DockyardError("quota exceeded\nsecond line is dropped")
            if name == "m-5":
                raise ValueError("boom")
            log("done")
        finally:
            with lock:
                active[0] -= 1

    run = batch.Batch(batch.expand_names(["m"], 6), action, lines.append, limit=limit)
    errors = run.run()
    assert peak[0] == limit
    assert errors == {"m-4": "quota exceeded", "m-5": "ValueError: boom"}
    assert "(m-1) working on m-1" in lines and "(m-6) done" in lines
    assert "(m-4) Error: quota exceeded" in lines
    assert all(line.startswith("(m-") for line in lines)
    assert run.summary().splitlines() == [
        "Created 4 of 6 machines: m-1, m-2, m-3, m-6",
        "Failed:",
        "  m-4: quota exceeded",
        "  m-5: ValueError: boom",
    ]


def test_cli_create_several_and_n_with_one_failure(tmp_path):
    dy = Dockyard(tmp_path / "store")
    url = "tcp://127.0.0.1:2376"
    dy("create", "-d", "none", "--url", url, "w-2")
    p = dy("create", "-d", "none", "--url", url, "-n", "3", "w", check=False)
    assert p.returncode == 1
    assert "(w-1) Machine recorded." in p.stdout and "(w-3) Machine recorded." in p.stdout
    assert "Created 2 of 3 machines: w-1, w-3" in p.stderr
    assert 'w-2: Docker machine "w-2" already exists' in p.stderr
    p = dy("create", "-d", "none", "--url", url, "a", "b")
    assert "Created 2 of 2 machines: a, b" in p.stdout
    assert sorted(dy("ls", "-q").stdout.split()) == ["a", "b", "w-1", "w-2", "w-3"]
    p = dy("create", "-d", "none", "--url", url, "c", "c", check=False)
    assert p.returncode == 1 and '"c" given twice' in p.stderr
