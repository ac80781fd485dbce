"""Health checks (`docker run --health-*`, an image's HEALTHCHECK): probes run as execs at the interval.

One scheduler thread looks at the running containers that have a check, and starts a probe thread for
each check that is due. A probe is an exec of the test (CMD argv, or CMD-SHELL through /bin/sh -c),
killed at its timeout; its exit code and its first 4096 bytes of output go into State.Health.Log (the
last 5 probes, as moby). Failures during the start period do not count; `retries` failures in a row make
the container unhealthy, a success healthy; a change of status is a `health_status: ...` event.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from typing import Any, Dict, List, Optional

from dockyard.engine.errors import EngineError
from dockyard.engine.runtime.execs import ExecManager
from dockyard.engine.runtime.manager import ContainerManager
from dockyard.engine.runtime.store import Container
from dockyard.engine.timefmt import rfc3339nano

log = logging.getLogger("dockyard.engine.runtime")

SECOND = 10**9
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096  # bytes of a probe's output kept (moby's maxOutputLen)
MAX_LOG = 5  # probes kept in State.Health.Log
TICK = 0.1  # how soon the scheduler notices a started container (seconds); probes run when due, not on ticks
MIN_WAIT = 0.002
# A start noticed later than this was not just made (the engine restarted with the container running): its
# first probe is one interval from now, as dockerd's monitor after a restore, not at once.
NOTICE_SLACK = 1.0


def check_config(c: Container) -> Optional[Dict[str, Any]]:
    """The container's effective health check (its own, else its image's, merged at create) or None."""
    hc = c.config.get("Healthcheck")
    if not isinstance(hc, dict):
        return None
    test = hc.get("Test")
    if not isinstance(test, list) or not test or test[0] == "NONE":
        return None
    if test[0] == "CMD" and len(test) > 1:
        argv = [str(a) for a in test[1:]]
    elif test[0] == "CMD-SHELL" and len(test) > 1:
        argv = ["/bin/sh", "-c", str(test[1])]
    else:
        return None

    def duration(key, default):
        value = hc.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    retries = hc.get("Retries")
    return {
        "argv": argv,
        "interval": duration("Interval", DEFAULT_INTERVAL),
        "timeout": duration("Timeout", DEFAULT_TIMEOUT),
        "start_period": duration("StartPeriod", 0),
        "start_interval": duration("StartInterval", DEFAULT_START_INTERVAL),
        "retries": retries
        if isinstance(retries, int) and not isinstance(retries, bool) and retries > 0
        else DEFAULT_RETRIES,
    }


class HealthMonitor:
    """Runs the health checks of every running container (one scheduler thread, one thread per probe)."""

    def __init__(self, containers: ContainerManager, execs: ExecManager) -> None:
        self.containers = containers
        self.execs = execs
        self.due: Dict[str, tuple] = {}  # container id -> (its StartedNs, next probe at, probing)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        wait = TICK
        while not self.stopping.wait(wait):
            try:
                self._tick()
            except Exception:
                log.exception("health check scheduler")
            wait = self.until_next()

    def until_next(self) -> float:
        """Seconds to the next due probe, at most TICK (new containers are noticed at that pace)."""
        now = time.monotonic()
        with self.lock:
            due = [at for _, at, probing in self.due.values() if not probing]
        return max(MIN_WAIT, min([TICK] + [at - now for at in due]))

    def _tick(self) -> None:
        now, now_ns = time.monotonic(), time.time_ns()  # read together: StartedNs maps onto `now`
        seen = set()
        for c in self.containers.list():
            if not c.running or c.state.get("Paused"):
                continue
            cfg = check_config(c)
            if cfg is None:
                continue
            seen.add(c.id)
            started = c.state.get("StartedNs")
            with self.lock:
                entry = self.due.get(c.id)
                if entry is None or entry[0] != started:
                    # (re)started: the status starts again, the first probe one (start) interval after the
                    # start itself (as dockerd's timer), however late this tick noticed it
                    self._record(c, None, reset=True)
                    first = cfg["start_interval"] if cfg["start_period"] else cfg["interval"]
                    entry = (started, started_monotonic(started, now, now_ns) + first / SECOND, False)
                    self.due[c.id] = entry
                _, at, probing = entry
                if probing or now < at:
                    continue
                self.due[c.id] = (started, at, True)
            threading.Thread(target=self._probe, args=(c, cfg, started), name="probe-" + c.id[:12], daemon=True).start()
        with self.lock:
            for cid in [cid for cid in self.due if cid not in seen]:
                del self.due[cid]

    def _probe(self, c: Container, cfg: Dict[str, Any], started: Any) -> None:
        result = None
        try:
            result = self._run(c, cfg)
        except EngineError as exc:
            result = {"ExitCode": -1, "Output": exc.message}  # e.g. the container stopped meanwhile
        except Exception as exc:
            log.exception("health probe of %s", c.id[:12])
            result = {"ExitCode": -1, "Output": str(exc)}
        finally:
            in_start = (time.time_ns() - int(c.state.get("StartedNs") or 0)) < cfg["start_period"]
            with self.lock:
                still = self.due.get(c.id)
                if still is not None and still[0] == started:
                    healthy = c.state.get("Health", {}).get("Status") == "healthy"
                    wait = cfg["start_interval"] if (in_start and not healthy) else cfg["interval"]
                    self.due[c.id] = (started, time.monotonic() + wait / SECOND, False)
        if result is not None and c.running and c.state.get("StartedNs") == started:
            self._record(c, result, in_start=in_start, retries=cfg["retries"])

    def _run(self, c: Container, cfg: Dict[str, Any]) -> Dict[str, Any]:
        start = rfc3339nano()
        inst = self.execs.create(c, {"Cmd": cfg["argv"], "AttachStdout": True, "AttachStderr": True})
        try:
            proc = self.execs.spawn(inst)
            output = bytearray()
            deadline = time.monotonic() + cfg["timeout"] / SECOND
            timed_out = False
            try:
                fds = list(proc.outputs)
                ctl = proc.ctl.fileno()
                while fds and not proc.exited:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        timed_out = True
                        break
                    ready, _, _ = select.select(fds + [ctl], [], [], min(left, 1.0))
                    if ctl in ready:
                        proc.poll_events()  # exited: a child it left behind may hold the pipes open
                    for fd in (f for f in ready if f != ctl):
                        if not _read_into(fd, output):
                            fds.remove(fd)
                for fd in fds:  # what the probe wrote just before it exited
                    if select.select([fd], [], [], 0)[0]:
                        _read_into(fd, output)
                while not timed_out and proc.poll_events() is not None:
                    pass
                if timed_out and proc.pid and not proc.exited:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)  # the helper has not reaped it: still this process
                    except OSError:
                        pass
                self.execs.finish(inst, proc)
            finally:
                proc.close()
            text = output.decode("utf-8", "replace")
            if timed_out:
                return {
                    "Start": start,
                    "End": rfc3339nano(),
                    "ExitCode": -1,
                    "Output": "Health check exceeded timeout (%s)" % _go_duration(cfg["timeout"]),
                }
            return {"Start": start, "End": rfc3339nano(), "ExitCode": int(proc.exit_code or 0), "Output": text}
        finally:
            self._forget(c, inst.id)

    def _forget(self, c: Container, eid: str) -> None:
        """A probe's exec is not one of the container's execs once it has run (they would pile up)."""
        with self.execs.lock:
            self.execs.execs.pop(eid, None)
        try:
            c.exec_ids.remove(eid)
        except ValueError:
            pass

    def _record(self, c: Container, result, reset=False, in_start=False, retries=DEFAULT_RETRIES) -> None:
        with c.lock:
            health = dict(c.state.get("Health") or {})
            old = health.get("Status")
            if reset:
                health = {"Status": "starting", "FailingStreak": 0, "Log": []}
                c.state["HealthStarted"] = c.state.get("StartedNs")  # views: this start's Health is here
            else:
                result.setdefault("Start", rfc3339nano())
                result.setdefault("End", rfc3339nano())
                logs: List[dict] = list(health.get("Log") or []) + [result]
                health["Log"] = logs[-MAX_LOG:]
                if result["ExitCode"] == 0:
                    health["Status"] = "healthy"
                    health["FailingStreak"] = 0
                elif not in_start or health.get("Status") != "starting":
                    health["FailingStreak"] = int(health.get("FailingStreak") or 0) + 1
                    if health["FailingStreak"] >= retries:
                        health["Status"] = "unhealthy"
            c.state["Health"] = health
            c.save_state()
        if not reset and health["Status"] != old:
            self.containers.emit(c, "health_status: " + health["Status"])


def _read_into(fd: int, output: bytearray) -> bool:
    """Read what fd has into output (up to MAX_OUTPUT kept); False at end of file."""
    try:
        data = os.read(fd, 65536)
    except OSError:
        return False
    if data and len(output) < MAX_OUTPUT:
        output += data[: MAX_OUTPUT - len(output)]
    return bool(data)


def _go_duration(ns: int) -> str:
    if ns % SECOND == 0:
        return "%ds" % (ns // SECOND)
    return "%gs" % (ns / SECOND)


def started_monotonic(started_ns: Any, now: float, now_ns: int) -> float:
    """The monotonic time of a start recorded as wall-clock nanoseconds (StartedNs), when it was just now
    (within NOTICE_SLACK); else, or if unknown, `now`. `now_ns`: the wall clock read with `now`."""
    try:
        ago = (now_ns - int(started_ns)) / SECOND
    except (TypeError, ValueError):
        return now
    return now - ago if 0.0 <= ago <= NOTICE_SLACK else now
