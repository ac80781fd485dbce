"""`docker exec`: exec instances (create, start, resize, inspect) and the engine side of an
exec process started through the fork server (execproc.py does the namespace work)."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import termios
import threading
import time
from typing import TYPE_CHECKING

from dockyard.engine.errors import Conflict, InvalidParameter, NotFound, SystemFailure
from dockyard.engine.runtime import channel, procident
from dockyard.engine.runtime import spec as specmod
from dockyard.engine.runtime.forkserver import ForkServerError
from dockyard.engine.runtime.store import Container

if TYPE_CHECKING:  # the manager builds its ExecManager and hands itself in
    from dockyard.engine.runtime.manager import ContainerManager

log = logging.getLogger("dockyard.engine")

START_TIMEOUT = 30.0


class ExecInstance:
    def __init__(self, eid, container, body):
        self.id = eid
        self.container = container
        self.body = body
        self.running = False
        self.started = False
        self.exit_code = None
        self.pid = 0
        self.proc = None
        self.lock = threading.Lock()
        self.done = threading.Event()

    def to_api(self):
        b = self.body
        cmd = list(b.get("Cmd") or [])
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": bool(b.get("Tty")),
                "entrypoint": cmd[0] if cmd else "",
                "arguments": cmd[1:],
                "privileged": bool(b.get("Privileged")),
                "user": b.get("User") or "",
            },
            "OpenStdin": bool(b.get("AttachStdin")),
            "OpenStderr": bool(b.get("AttachStderr")),
            "OpenStdout": bool(b.get("AttachStdout")),
            "CanRemove": False,
            "ContainerID": self.container.id,
            "DetachKeys": b.get("DetachKeys") or "",
            "Pid": self.pid,
        }


class ExecProcess:
    """Pipes or pty of a started exec process, plus its control channel (events)."""

    def __init__(self, ctl, tty, attach_stdin):
        self.ctl = ctl
        self.tty = tty
        self.attach_stdin = attach_stdin
        self.outputs = {}
        self.stdin_fd = None
        self.master = None
        self.exited = False
        self.exit_code = None
        self.pid = 0
        self.started = False
        self.failure = None

    def poll_events(self, block=False):
        """Read one control message (non-blocking unless block)."""
        self.ctl.setblocking(block)
        try:
            msg, fds = channel.recv(self.ctl, with_fds=True)
        except BlockingIOError:
            return None
        except (channel.ChannelClosed, OSError):
            if not self.exited:
                self.exited = True
                if self.exit_code is None:
                    self.exit_code = 126 if not self.started else 137
            return None
        finally:
            try:
                self.ctl.setblocking(True)
            except OSError:
                pass
        if msg.get("tty") and fds:
            self.master = fds[0]
            self.outputs = {self.master: 1}
        else:
            for fd in fds:
                os.close(fd)
        event = msg.get("event")
        if event == "started":
            self.started = True
            self.pid = int(msg.get("pid") or 0)
        elif event == "failed":
            self.failure = msg
            self.exited = True
            self.exit_code = int(msg.get("code") or 126)
        elif event == "exited":
            self.exited = True
            self.exit_code = int(msg.get("code", 0))
        return msg

    def write_stdin(self, data):
        fd = self.master if self.master is not None else self.stdin_fd
        if fd is None:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except OSError:
                return
            view = view[n:]

    def close_stdin(self):
        if self.stdin_fd is not None:
            try:
                os.close(self.stdin_fd)
            except OSError:
                pass
            self.stdin_fd = None

    def close_output(self, fd):
        if self.outputs.pop(fd, None) is not None and fd != self.master:
            try:
                os.close(fd)
            except OSError:
                pass

    def resize(self, h, w):
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", int(h), int(w), 0, 0))

    def close(self):
        for fd in list(self.outputs):
            self.close_output(fd)
        self.close_stdin()
        if self.master is not None:
            try:
                os.close(self.master)
            except OSError:
                pass
            self.master = None
        try:
            self.ctl.close()
        except OSError:
            pass


def _check_init_running(c: Container) -> None:
    """Conflict unless the container's init still runs: the recorded PID with its recorded start
    time (the engine's state can lag behind an init that has just exited, and a PID is reused)."""
    if not c.running or not procident.is_running(c.pid, c.state.get("PidStartTime")):
        raise Conflict("container %s is not running" % c.id)


class ExecManager:
    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager
        self.execs: dict[str, ExecInstance] = {}
        self.lock = threading.Lock()

    def get(self, eid: str) -> ExecInstance:
        with self.lock:
            inst = self.execs.get(eid)
        if inst is None:
            raise NotFound("No such exec instance: %s" % eid)
        return inst

    def create(self, c: Container, body: dict) -> ExecInstance:
        if not isinstance(body, dict):
            raise InvalidParameter("invalid exec config")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
            body["Cmd"] = cmd
        if not cmd:
            raise InvalidParameter("No exec command specified")
        with c.lock:
            _check_init_running(c)
            if c.state.get("Paused"):
                raise Conflict("Container %s is paused, unpause the container before exec" % c.id)
        eid = os.urandom(32).hex()
        inst = ExecInstance(eid, c, body)
        with self.lock:
            self.execs[eid] = inst
        c.exec_ids.append(eid)
        self.manager.emit(c, "exec_create: %s" % " ".join(cmd), {"execID": eid})
        return inst

    def forget_container(self, cid: str) -> None:
        with self.lock:
            for eid in [e for e, inst in self.execs.items() if inst.container.id == cid]:
                del self.execs[eid]

    def spawn(
        self,
        inst: ExecInstance,
        tty: bool | None = None,
        console_size: tuple[int, int] | None = None,
        detach: bool = False,
    ) -> ExecProcess:
        """Start the process; -> ExecProcess once the helper reported started (or failed)."""
        c = inst.container
        with inst.lock:
            if inst.started:
                raise Conflict("Error: Exec command %s is already running" % inst.id)
            inst.started = True
        with c.lock:
            _check_init_running(c)
            body = dict(inst.body)
            if tty is not None:
                body["Tty"] = bool(tty)
            if console_size:
                body["ConsoleSize"] = console_size
            spec = specmod.exec_spec(c, body, c.state.get("Cgroup"), self.manager.layout)
        want_stdin = bool(body.get("AttachStdin")) and not detach
        ctl, remote = channel.pair()
        proc = ExecProcess(ctl, bool(body.get("Tty")), want_stdin)
        fds, close_after = [remote.fileno()], [remote]
        if not proc.tty:
            if want_stdin:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                proc.stdin_fd = in_w
            else:
                in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            if detach:
                out_r, out_w = None, os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
                err_r, err_w = None, os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                proc.outputs = {out_r: 1, err_r: 2}
            fds += [in_r, out_w, err_w]
        try:
            self.manager.forkserver.request("exec", spec, fds)
        except ForkServerError as exc:
            proc.close()
            raise SystemFailure(str(exc)) from None
        finally:
            for s in close_after:
                s.close()
            for fd in fds[1:]:
                os.close(fd)
        inst.running = True
        inst.proc = proc
        # Wait for started/failed (and the pty master, which comes first).
        deadline = time.monotonic() + START_TIMEOUT
        proc.ctl.settimeout(START_TIMEOUT)
        while not proc.started and not proc.exited and time.monotonic() < deadline:
            proc.poll_events(block=True)
        proc.ctl.settimeout(None)
        if proc.failure and proc.failure.get("gone"):
            # The init exited after the check above: the helper refused to join whatever holds its PID now.
            inst.running = False
            proc.close()
            raise Conflict("container %s is not running" % c.id)
        inst.pid = proc.pid
        self.manager.emit(c, "exec_start: %s" % " ".join(body.get("Cmd") or []), {"execID": inst.id})
        return proc

    def finish(self, inst: ExecInstance, proc: ExecProcess) -> None:
        """Record the exit code (before the client's stream is closed)."""
        while not proc.exited:
            proc.poll_events(block=True)
        inst.exit_code = proc.exit_code
        inst.running = False
        inst.done.set()
        self.manager.emit(inst.container, "exec_die", {"execID": inst.id, "exitCode": str(proc.exit_code)})

    def run_detached(self, inst: ExecInstance, proc: ExecProcess) -> None:
        def wait():
            try:
                if proc.master is not None:
                    # A detached terminal still needs a reader, or the process blocks on output.
                    while True:
                        try:
                            if not os.read(proc.master, 65536):
                                break
                        except OSError:
                            break
                self.finish(inst, proc)
            finally:
                proc.close()

        threading.Thread(target=wait, name="exec-%s" % inst.id[:12], daemon=True).start()
