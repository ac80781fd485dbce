"""`dockyard create -n N --parallel P` end to end, in this process, with the openstack driver against its
fake API on 127.0.0.1: the fake holds every server-create request until the test lets it go, so the test
sees exactly P creates inside at once while the other machines wait for a slot (found parked on a lock, no
clock involved); shared objects are made once, every machine's failure is reported with its own reason."""

import os
import sys
import threading
import traceback

import pytest

from tests.drivers.cloud_fakes import FakeAPI, loopback_only, run_cli

pytest.importorskip("libcloud")

from tests.drivers.test_cloud_openstack import PASSWORD, PROJECT, REGION, USER, OpenStackModel  # noqa: E402

N, LIMIT = 5, 2
HANG_GUARD = 120  # seconds; only ever reached when something is broken


class GatedOpenStack(OpenStackModel):
    """Holds each POST /servers until released; the servers then fail (quota for w-2, ERROR for the rest)."""

    def __init__(self):
        super().__init__()
        self.cond = threading.Condition()
        self.in_flight = self.peak = self.tokens = 0
        self.arrived = []

    def before_handle(self, r):
        if not (r.method == "POST" and r.path == "/compute/v2.1/servers"):
            return
        with self.cond:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.arrived.append(r.json["server"]["name"])
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.tokens > 0, timeout=HANG_GUARD):
                raise RuntimeError("never released")
            self.tokens -= 1
            self.in_flight -= 1
            self.cond.notify_all()

    def release(self, n):
        with self.cond:
            self.tokens += n
            self.cond.notify_all()

    def nova(self, m, p, r):
        if m == "POST" and p == "/servers" and r.json["server"]["name"] == "w-2":
            return (
                403,
                {
                    "forbidden": {
                        "code": 403,
                        "message": "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances",
                    }
                },
                {},
            )
        out = super().nova(m, p, r)
        for s in self.servers.values():
            s["status"] = "ERROR"  # scheduling failed: the create stops at its first look
        return out


def batch_threads(cli):
    """('inside' | 'parked' | 'other') for every thread doing batch work for the CLI thread `cli` (which
    itself waits for them): inside = in machine.create, parked = waiting on a threading lock outside it."""
    sep = os.sep
    states = []
    for ident, frame in sys._current_frames().items():
        stack = traceback.extract_stack(frame)
        files = [f.filename for f in stack]
        if not any(f.endswith(f"machines{sep}batch.py") for f in files) or ident in (threading.get_ident(), cli.ident):
            continue
        if any(f.endswith(f"machines{sep}machine.py") for f in files):
            states.append("inside")
        elif stack[-1].filename == threading.__file__ and stack[-1].name in ("acquire", "wait"):
            states.append("parked")
        else:
            states.append("other")
    return sorted(states)


def wait_until(what, check, model):
    with model.cond:
        ok = model.cond.wait_for(lambda: check() or model.in_flight > LIMIT, timeout=HANG_GUARD)
    assert model.in_flight <= LIMIT, f"{model.in_flight} creates at once with --parallel {LIMIT}"
    assert ok, f"timed out waiting until {what}"


def wait_settled(cli, model, inside, parked):
    """Polled (threads do not report where they wait), checking the in-flight bound on every look."""
    want = sorted(["inside"] * inside + ["parked"] * parked)
    for _ in range(HANG_GUARD * 100):
        assert model.in_flight <= LIMIT, f"{model.in_flight} creates at once with --parallel {LIMIT}"
        if batch_threads(cli) == want:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"batch threads {batch_threads(cli)}, expected {want}")


def test_create_n_with_parallel_limit(tmp_path, capsys, monkeypatch):
    loopback_only(monkeypatch)
    monkeypatch.setenv("OS_USERNAME", USER)
    monkeypatch.setenv("OS_PASSWORD", PASSWORD)
    model = GatedOpenStack()
    api = FakeAPI(model)
    model.url = api.url
    result = []
    cli = threading.Thread(
        target=lambda: result.append(
            run_cli(
                capsys,
                tmp_path / "store",
                "create",
                "-d",
                "openstack",
                "-n",
                N,
                "--parallel",
                LIMIT,
                "--openstack-auth-url",
                api.url + "/identity/v3",
                "--openstack-tenant-name",
                PROJECT,
                "--openstack-region",
                REGION,
                "--openstack-flavor-name",
                "m1.small",
                "w",
            )
        ),
        daemon=True,
    )
    try:
        cli.start()
        remaining = N
        while remaining:
            expected = min(LIMIT, remaining)
            done = N - remaining
            wait_until(
                f"{expected} more creates are held",
                lambda n=done + expected, e=expected: len(model.arrived) == n and model.in_flight == e,
                model,
            )
            # The bound: the other machines have not started, they wait for a slot.
            wait_settled(cli, model, inside=expected, parked=remaining - expected)
            assert model.in_flight == expected
            model.release(expected)
            remaining -= expected
        cli.join(HANG_GUARD)
        assert not cli.is_alive()
    finally:
        model.release(N)
        api.close()

    code, out, err = result[0]
    assert model.peak == LIMIT and sorted(model.arrived) == [f"w-{i}" for i in range(1, N + 1)]
    assert code == 1
    for i in range(1, N + 1):
        assert f"(w-{i}) Running pre-create checks..." in out
    assert f"Created 0 of {N} machines" in err
    failed = [line.strip() for line in err.splitlines() if line.startswith("  w-")]
    assert len(failed) == N and "Traceback" not in err
    assert [f for f in failed if f.startswith("w-2:")] == [
        (
            "w-2: openstack: creating the server: quota reached (403 Forbidden Quota exceeded for instances: "
            "Requested 1, but already used 10 of 10 instances)"
        )
    ]
    assert all("is in state error" in f for f in failed if not f.startswith("w-2:"))
    # Shared objects once, per-machine objects per machine.
    assert len(api.calls("POST", path="/network/v2.0/security-groups")) == 1
    assert len(api.calls("POST", path="/network/v2.0/security-group-rules")) == 2
    assert len(api.calls("POST", path="/compute/v2.1/os-keypairs")) == N
