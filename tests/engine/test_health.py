"""Health checks run: `docker run --health-*` and an image's HEALTHCHECK, State.Health, ps and events."""

import json
import os
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the engine needs root")


def _health(eng, name):
    return json.loads(eng.docker("inspect", name).stdout)[0]["State"].get("Health")


def _wait_status(eng, name, want, limit=30):
    deadline = time.monotonic() + limit  # only bounds a check that never runs
    while True:
        h = _health(eng, name)
        if h and h["Status"] == want:
            return h
        assert time.monotonic() < deadline, h
        time.sleep(0.1)


def test_healthy_then_unhealthy_with_ps_inspect_and_events(eng):
    since = str(int(time.time()) - 1)
    eng.docker(
        "run", "-d", "--name", "hc1", "--health-cmd", "cat /ok", "--health-interval", "200ms",
        "--health-retries", "2", "busybox", "sh", "-c", "touch /ok; sleep 60",
    )  # fmt: skip
    h = _wait_status(eng, "hc1", "healthy")
    assert h["FailingStreak"] == 0 and h["Log"][-1]["ExitCode"] == 0
    assert "(healthy)" in eng.docker("ps", "--filter", "name=hc1", "--format", "{{.Status}}").stdout
    assert eng.docker("ps", "-q", "--filter", "health=healthy").stdout.strip() != ""
    eng.docker("exec", "hc1", "rm", "/ok")
    h = _wait_status(eng, "hc1", "unhealthy")
    assert h["FailingStreak"] >= 2 and "No such file" in h["Log"][-1]["Output"]
    assert len(h["Log"]) <= 5
    assert "(unhealthy)" in eng.docker("ps", "--filter", "name=hc1", "--format", "{{.Status}}").stdout
    until = str(int(time.time()) + 1)
    events = eng.docker("events", "--since", since, "--until", until, "--filter", "container=hc1").stdout
    assert "health_status: healthy" in events and "health_status: unhealthy" in events
    # probes do not pile up as the container's execs
    assert len(json.loads(eng.docker("inspect", "hc1").stdout)[0].get("ExecIDs") or []) <= 2
    eng.docker("rm", "-f", "hc1")


def test_image_healthcheck_timeout_and_start_period(eng, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nHEALTHCHECK --interval=200ms --timeout=300ms --retries=1 CMD sleep 5\n"
    )
    eng.docker("build", "-q", "-t", "hc:slow", str(ctx), timeout=120)
    eng.docker("run", "-d", "--name", "hc2", "hc:slow", "sleep", "60")
    assert _health(eng, "hc2")["Status"] in ("starting", "unhealthy")
    h = _wait_status(eng, "hc2", "unhealthy")
    assert h["Log"][-1]["ExitCode"] == -1 and "exceeded timeout" in h["Log"][-1]["Output"]
    # the request's flags override the image's; a long start period keeps it starting
    eng.docker(
        "run", "-d", "--name", "hc3", "--health-cmd", "false", "--health-interval", "100ms",
        "--health-start-period", "60s", "--health-start-interval", "100ms", "--health-retries", "1",
        "hc:slow", "sleep", "60",
    )  # fmt: skip
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        h = _health(eng, "hc3")
        assert h["Status"] == "starting"
        time.sleep(0.2)
    assert h["Log"] and h["Log"][-1]["ExitCode"] == 1  # probes ran, failures did not count
    assert "(health: starting)" in eng.docker("ps", "--filter", "name=hc3", "--format", "{{.Status}}").stdout
    eng.docker("rm", "-f", "hc2", "hc3")
    # --no-healthcheck turns the image's off
    eng.docker("run", "-d", "--name", "hc4", "--no-healthcheck", "hc:slow", "sleep", "60")
    time.sleep(0.5)
    assert _health(eng, "hc4") is None
    eng.docker("rm", "-f", "hc4")


def test_a_probe_that_leaves_a_child_holding_its_output_ends_when_it_exits(eng):
    eng.docker(
        "run", "-d", "--name", "hc5", "--health-cmd", "sleep 30 & echo bg-ok", "--health-interval", "200ms",
        "--health-timeout", "20s", "busybox", "sleep", "60",
    )  # fmt: skip
    started = time.monotonic()
    h = _wait_status(eng, "hc5", "healthy")
    assert time.monotonic() - started < 15  # not the 20 s timeout
    assert h["Log"][-1]["ExitCode"] == 0 and h["Log"][-1]["Output"] == "bg-ok\n"
    eng.docker("rm", "-f", "hc5")
