"""Controlling a container's running process through its supervisor: signals (kill, stop), the
freezer (pause, unpause), the tty size, attaching to its stdio, and waiting for it to exit."""

from __future__ import annotations

import signal
import socket
import time
from typing import Callable, Sequence

from dockyard.engine.errors import Conflict, InvalidParameter, SystemFailure
from dockyard.engine.runtime import cgroups, channel
from dockyard.engine.runtime.signals import SignalError, parse_signal
from dockyard.engine.runtime.store import Container

KILL_WAIT = 30.0
_MANUAL_STOP_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


class ContainerControl:
    """Signals, freezer, tty size, attach and wait for one container at a time (its lock held inside)."""

    def __init__(
        self,
        emit: Callable[..., None],
        cancel_restart: Callable[[Container], None],
    ) -> None:
        self.emit = emit  # ContainerManager.emit(container, action, extra)
        self.cancel_restart = cancel_restart  # drops a pending restart-policy restart

    def send(self, c: Container, obj: dict, fds: Sequence[int] = ()) -> bool:
        """A message to the supervisor; False if it is not reachable."""
        ctl = c.control
        if ctl is None:
            return False
        try:
            channel.send(ctl, obj, fds)
            return True
        except OSError:
            return False

    def kill(self, c: Container, sig_value: str | int | None = None, manual: bool = True) -> None:
        try:
            sig = parse_signal(sig_value) if sig_value not in (None, "") else signal.SIGKILL
        except SignalError as exc:
            raise InvalidParameter(str(exc)) from None
        with c.lock:
            if not c.running:
                raise Conflict("cannot kill container: %s: container %s is not running" % (c.name, c.id))
            if manual and sig in _MANUAL_STOP_SIGNALS:
                c.state["ManuallyStopped"] = True
                c.save_state()
            self.send(c, {"op": "kill", "signal": sig})
            if c.state.get("Paused") and sig in _MANUAL_STOP_SIGNALS:
                self.thaw(c)
        self.emit(c, "kill", {"signal": str(sig)})

    def stop(self, c: Container, timeout: float | None = None, sig_value: str | int | None = None) -> bool:
        with c.lock:
            if c.status == "restarting":
                self.cancel_restart(c)
                c.state.update({"Status": "exited", "Restarting": False, "ManuallyStopped": True})
                c.save_state()
                c.cond.notify_all()
                return True
            if not c.running:
                return False
            c.state["ManuallyStopped"] = True
            c.save_state()
            seq = c.exit_seq
        try:
            sig = parse_signal(sig_value or c.config.get("StopSignal") or "SIGTERM")
        except SignalError as exc:
            raise InvalidParameter(str(exc)) from None
        if timeout is None:
            timeout = c.config.get("StopTimeout")
        timeout = 10 if timeout is None else int(timeout)
        if timeout < 0:
            timeout = None  # -1: wait forever
        with c.lock:
            if c.running:
                self.send(c, {"op": "kill", "signal": sig})
                if c.state.get("Paused"):
                    self.thaw(c)
        self.emit(c, "kill", {"signal": str(sig)})
        if not self.wait_exit(c, seq, timeout):
            with c.lock:
                if c.running:
                    self.send(c, {"op": "kill", "signal": signal.SIGKILL})
            self.emit(c, "kill", {"signal": str(int(signal.SIGKILL))})
            if not self.wait_exit(c, seq, KILL_WAIT):
                raise SystemFailure("container %s did not stop after SIGKILL" % c.id[:12])
        self.emit(c, "stop")
        return True

    def wait_exit(self, c: Container, seq: int, timeout: float | None) -> bool:
        """False if `c` still runs the run numbered `seq` after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with c.lock:
            while c.exit_seq == seq and c.running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                c.cond.wait(left if left is not None else 1.0)
            return True

    def pause(self, c: Container) -> None:
        with c.lock:
            if not c.running:
                raise Conflict("Container %s is not running" % c.id)
            if c.state.get("Paused"):
                raise Conflict("Container %s is already paused" % c.id)
            cg = cgroups.Cgroup.from_dict(c.state.get("Cgroup"))
            try:
                cg.freeze(True)
            except OSError as exc:
                raise SystemFailure("cannot pause container %s: %s" % (c.id[:12], exc)) from None
            c.state.update({"Paused": True, "Status": "paused"})
            c.save_state()
        self.emit(c, "pause")

    def unpause(self, c: Container) -> None:
        with c.lock:
            if not c.state.get("Paused") or not c.running:
                raise Conflict("Container %s is not paused" % c.id)
            self.thaw(c)
        self.emit(c, "unpause")

    def thaw(self, c: Container) -> None:
        """Unfreeze the cgroup and record the container running again (the caller holds c.lock)."""
        cg = cgroups.Cgroup.from_dict(c.state.get("Cgroup"))
        try:
            cg.freeze(False)
        except OSError as exc:
            raise SystemFailure("cannot unpause container %s: %s" % (c.id[:12], exc)) from None
        c.state.update({"Paused": False, "Status": "running"})
        c.save_state()

    def resize(self, c: Container, h: int, w: int) -> None:
        with c.lock:
            if not c.running:
                raise Conflict("Container %s is not running" % c.id)
            self.send(c, {"op": "resize", "h": int(h or 0), "w": int(w or 0)})

    def attach_socket(self, c: Container, opts: dict) -> socket.socket:
        """A stream socket wired to the container's stdio: now if it runs, else at its next start."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with c.lock:
            if c.removing or c.removed:
                mine.close()
                theirs.close()
                raise Conflict("container %s is being removed" % c.id)
            if c.running and c.control is not None:
                ok = self.send(c, dict(opts, op="attach"), [theirs.fileno()])
                theirs.close()
                if not ok:
                    mine.close()
                    raise SystemFailure("cannot attach: the container's supervisor is not reachable")
            else:
                c.pending_attach.append((theirs, dict(opts)))
        self.emit(c, "attach")
        return mine

    # -- wait ---------------------------------------------------------------------------------
    def wait(self, c: Container, condition: str = "not-running", gone: Callable[[], bool] | None = None) -> int | None:
        """Block until `condition`; -> exit code. `gone()` True aborts (client left) -> None."""
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter("invalid condition: %s" % condition)
        with c.lock:
            seq = c.exit_seq
            while True:
                if condition == "removed" and c.removed:
                    return c.state.get("ExitCode", 0)
                if condition == "not-running" and not c.running and c.status != "restarting" and not c.removing:
                    return c.state.get("ExitCode", 0)
                if condition == "next-exit" and c.exit_seq != seq:
                    return c.state.get("ExitCode", 0)
                if condition == "not-running" and c.removed:
                    return c.state.get("ExitCode", 0)
                c.cond.wait(0.5)
                if gone is not None and gone():
                    return None
