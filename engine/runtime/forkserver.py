"""The fork server: a warm, single-threaded copy of the daemon that forks supervisors and exec
helpers on request, so no container start pays for a new interpreter.

The daemon forks it at boot, before any thread exists, with every runtime module imported.
Requests arrive on a SEQPACKET socketpair: {"op": "supervise"|"exec", "spec": {...}} plus the
descriptors the child needs (its control channel first). The server never answers: the forked
child talks to the daemon over the control channel it was given. SIGCHLD is ignored here, so
finished children are reaped by the kernel; they reset it before running anything else.
"""

import os
import signal
import socket
import threading

from dockyard.engine.runtime import channel, execproc, libc, supervisor

TARGETS = {"supervise": supervisor.main, "exec": execproc.main}


class ForkServerError(RuntimeError):
    """The fork server is gone or refused a request."""


def _close_all_except(keep):
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 1024)
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def serve(sock):
    """The fork server's loop (in the forked process). Returns when the daemon goes away."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    libc.set_process_name("dockyard-fork")
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on a foreground engine: the daemon decides
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    _close_all_except({sock.fileno()})
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    while True:
        try:
            msg, fds = channel.recv(sock, with_fds=True)
        except channel.ChannelClosed:
            return
        except InterruptedError:
            continue
        except OSError:
            return
        target = TARGETS.get(msg.get("op"))
        if target is None:
            for fd in fds:
                os.close(fd)
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            if fds:
                try:
                    ctl = socket.socket(fileno=fds[0])
                    channel.send(ctl, {"event": "failed", "error": "fork: %s" % exc, "code": 125})
                    ctl.close()
                except OSError:
                    pass
                for fd in fds[1:]:
                    os.close(fd)
            continue
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                sock.close()
                code = target(msg.get("spec") or {}, fds) or 0
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


class ForkServer:
    """Daemon side: start() forks the server; request() hands it work."""

    def __init__(self):
        self.sock = None
        self.pid = None
        self._lock = threading.Lock()

    def start(self):
        if threading.active_count() > 1:
            # Forking a threaded process could copy a lock held by another thread. logging only here: the
            # daemon forks the server before it imports logging, so the server's image carries none.
            import logging

            logging.getLogger("dockyard.engine").warning(
                "fork server started while %d threads run", threading.active_count()
            )
        parent, child = channel.pair()
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                serve(child)
            finally:
                os._exit(0)
        child.close()
        self.sock = parent
        self.pid = pid
        return pid

    def request(self, op, spec, fds):
        if self.sock is None:
            raise ForkServerError("the fork server is not running")
        try:
            with self._lock:
                channel.send(self.sock, {"op": op, "spec": spec}, fds)
        except OSError as exc:
            raise ForkServerError("the fork server is gone: %s" % exc) from None

    def alive(self):
        if self.pid is None:
            return False
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
