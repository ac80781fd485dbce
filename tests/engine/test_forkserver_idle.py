"""The fork server is started on demand and exits after a quiet period: containers it started keep running,
the next start gets a fresh server, concurrent first starts and a request racing its idle exit all work."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dockyard.engine.runtime import channel
from dockyard.engine.runtime.forkserver import IDLE_EXIT_ENV, ForkServer
from tests.engine.engine_helper import REPO
from tests.engine.runtime_helper import RuntimeEngine, busybox_engine, child_pids

N = ("--network", "none")


def _fork_servers(eng: RuntimeEngine) -> list[int]:
    out = []
    for pid in child_pids(eng.proc.proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dockyard-fork":
                out.append(pid)
        except OSError:
            pass
    return out


def _wait_for(what, predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


@pytest.fixture
def quick_idle_engine(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("containers need root")
    monkeypatch.setenv(IDLE_EXIT_ENV, "1")
    with busybox_engine() as e:
        yield e


def test_idle_exit_leaves_containers_running_and_the_next_start_works(quick_idle_engine):
    eng = quick_idle_engine
    assert _fork_servers(eng) == []  # none at boot: the idle engine is the daemon alone
    eng.docker("run", "-d", *N, "--name", "before", "busybox", "sleep", "600")
    pid = json.loads(eng.docker("inspect", "before").stdout)[0]["State"]["Pid"]
    with open(f"/proc/{pid}/stat") as fh:
        supervisor = int(fh.read().rsplit(")", 1)[1].split()[1])
    _wait_for("the fork server's idle exit", lambda: _fork_servers(eng) == [])
    time.sleep(0.3)
    assert os.path.exists(f"/proc/{pid}") and os.path.exists(f"/proc/{supervisor}")
    assert json.loads(eng.docker("inspect", "before").stdout)[0]["State"]["Running"] is True
    # the next requests start a fresh server: an exec into the old container, a new container
    assert eng.docker("exec", "before", "echo", "in-before").stdout == "in-before\n"
    assert eng.docker("run", "--rm", *N, "busybox", "echo", "after").stdout == "after\n"
    eng.docker("stop", "-t", "1", "before")
    assert eng.docker("inspect", "-f", "{{.State.ExitCode}}", "before").stdout.strip() == "137"


def test_concurrent_runs_at_first_start_and_after_an_idle_exit(quick_idle_engine):
    eng = quick_idle_engine
    for round_ in range(2):
        assert _fork_servers(eng) == []
        out: dict[int, object] = {}

        def run(i):
            try:
                out[i] = eng.docker("run", "--rm", *N, "busybox", "echo", f"r{round_}-{i}").stdout
            except BaseException as exc:  # reported below
                out[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert out == {i: f"r{round_}-{i}\n" for i in range(3)}
        assert len(_fork_servers(eng)) <= 1
        _wait_for("the fork server's idle exit", lambda: _fork_servers(eng) == [])


def test_no_request_is_lost_to_the_idle_exit():
    # Requests sent around the moment the server gives up: each must reach a forked helper, which answers on
    # its control channel (an exec helper for PID 0 reports the container gone), whether the old server
    # still served it or the daemon's side started a fresh one after its send failed.
    server = ForkServer(idle_exit=0.05)
    rng = random.Random(11)
    servers = set()
    try:
        for _ in range(40):
            time.sleep(rng.uniform(0.03, 0.09))
            ctl, remote = channel.pair()
            try:
                server.request("exec", {"pid": 0}, [remote.fileno()])
                servers.add(server.pid)
            finally:
                remote.close()
            ctl.settimeout(20)
            msg = channel.recv(ctl)
            ctl.close()
            assert msg.get("event") == "failed" and msg.get("gone"), msg
    finally:
        server.stop()
    assert len(servers) > 1  # it did exit and come back in between


def test_a_server_started_by_a_short_lived_thread_outlives_it():
    # PR_SET_PDEATHSIG fires when the parent *thread* ends: request threads come and go, the server must stay.
    server = ForkServer(idle_exit=60)
    try:
        t = threading.Thread(target=server.start)
        t.start()
        t.join()
        pid = server.pid
        time.sleep(0.5)
        assert server.pid == pid and os.path.exists(f"/proc/{pid}")
        ctl, remote = channel.pair()
        try:
            server.request("exec", {"pid": 0}, [remote.fileno()])
        finally:
            remote.close()
        ctl.settimeout(20)
        assert channel.recv(ctl).get("gone")
        ctl.close()
        assert server.pid == pid  # the same server served it
    finally:
        server.stop()


def test_the_server_dies_with_the_daemon_and_its_containers_do_not():
    if os.geteuid() != 0:
        pytest.skip("containers need root")
    eng = RuntimeEngine()
    try:
        eng.start()
        eng.load_busybox()
        eng.docker("run", "-d", *N, "--name", "kept", "busybox", "sleep", "600")
        pid = json.loads(eng.docker("inspect", "kept").stdout)[0]["State"]["Pid"]
        (fork_server,) = _fork_servers(eng)
        eng.stop(signal.SIGKILL)  # no shutdown code runs: PR_SET_PDEATHSIG takes the server down
        _wait_for("the fork server's death", lambda: not _alive(fork_server))
        assert _alive(pid)
        eng.start()
        assert json.loads(eng.docker("inspect", "kept").stdout)[0]["State"]["Running"] is True
        eng.docker("rm", "-f", "kept")
    finally:
        eng.cleanup()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Runs the server's loop in a child interpreter with select() replaced: the request arrives right after the
# idle timeout fired, before the server shut its socket down, the window the drain is for.
_RACE = """
import json, signal, socket, types
from dockyard.engine.runtime import channel, forkserver
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
daemon_end, server_end = channel.pair()
ctl, remote = channel.pair()
def late_select(r, w, x, timeout):
    channel.send(daemon_end, {"op": "exec", "spec": {"pid": 0}}, [remote.fileno()])
    remote.close()
    return [], [], []
forkserver.select = types.SimpleNamespace(select=late_select)
forkserver.serve(server_end, 0.01)
try:
    channel.send(daemon_end, {"op": "exec", "spec": {"pid": 0}})
    after = "sent"
except OSError as exc:
    after = type(exc).__name__
server_end.close()  # as the server's exit does: whatever was left queued is dropped
ctl.settimeout(20)
try:
    reply = channel.recv(ctl)
except channel.ChannelClosed:
    reply = None
print(json.dumps({"reply": reply, "after": after}))
"""


def test_a_request_queued_as_the_idle_exit_begins_is_still_served():
    out = subprocess.run(
        [sys.executable, "-c", _RACE],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["reply"] and result["reply"].get("gone"), result  # an exec helper was forked and answered
    assert result["after"] == "BrokenPipeError", result  # later sends fail: the daemon starts a fresh server
