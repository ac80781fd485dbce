"""When health probes run (engine/runtime/health.py): the first one a (start) interval after the container's
start itself, however late the scheduler noticed the start (but one interval from now for a container the
engine finds already running, as dockerd after a restore); the scheduler sleeps until the next due probe
instead of running probes on a coarse tick."""

from __future__ import annotations

import time

import pytest

from dockyard.engine.runtime import health

NOW_NS = 5_000_000_000_000


def test_a_start_just_made_counts_from_the_start():
    now, now_ns = 1000.0, 5_000_000_000_000
    assert health.started_monotonic(now_ns - 300_000_000, now, now_ns) == pytest.approx(999.7)
    assert health.started_monotonic(now_ns, now, now_ns) == now


@pytest.mark.parametrize(
    "started",
    [
        NOW_NS - 3600 * health.SECOND,  # found running after an engine restart
        NOW_NS + 60 * health.SECOND,  # the wall clock was set back since
        None,
        "garbage",
    ],
    ids=["long-ago", "future", "none", "garbage"],
)
def test_other_starts_count_from_now(started):
    assert health.started_monotonic(started, 1234.5, NOW_NS) == 1234.5


def test_the_scheduler_sleeps_until_the_next_due_probe():
    mon = health.HealthMonitor(None, None)  # type: ignore[arg-type]  # the schedule needs no containers
    assert mon.until_next() == health.TICK  # nothing due: new containers are looked for at TICK
    now = time.monotonic()
    mon.due = {"a": (1, now + 0.04, False), "b": (1, now + 0.01, True), "c": (1, now + 5, False)}
    assert 0.02 < mon.until_next() <= 0.04  # "b" is probing: its time does not count
    mon.due["d"] = (1, now - 1, False)
    assert mon.until_next() == health.MIN_WAIT
