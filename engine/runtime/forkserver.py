"""The fork server: a small, single-threaded interpreter that forks supervisors and exec helpers on request,
so no container start pays for a new interpreter while it runs.

It is not a fork of the daemon: the daemon starts it on demand (ForkServer.request, or start() when a start
is likely) by exec'ing a fresh `python3 -S -I` that imports only this module and the runtime modules a
container's setup needs (supervisor, exec helper). So it, and every supervisor and exec helper forked from
it, holds none of the daemon's memory: no API, images, build or TLS module, no server key. It exits by itself
after IDLE_EXIT seconds without a request, and dies with the daemon (PR_SET_PDEATHSIG, and EOF on its socket).
Supervisors and exec helpers keep running when it exits: PR_SET_PDEATHSIG is not inherited across fork, and a
supervisor detaches (setsid) anyway.

Requests arrive on a SEQPACKET socketpair: {"op": "supervise"|"exec", "spec": {...}} plus the descriptors the
child needs (its control channel first). The server never answers: the forked child talks to the daemon over
the control channel it was given. SIGCHLD is ignored here, so finished children are reaped by the kernel; they
reset it before running anything else.

No request is lost to the idle exit: the server first shuts its socket down for reading (from then on the
daemon's send fails with EPIPE, and the daemon starts a fresh server and sends again), then serves what was
queued before that, then exits.
"""

import os
import select
import signal
import socket
import sys
import threading

from dockyard.engine.runtime import channel, execproc, libc, supervisor

TARGETS = {"supervise": supervisor.main, "exec": execproc.main}
# Seconds without a request before the server exits: long enough that `docker run` after `docker run` (a script,
# compose up, a test suite) finds it warm, short enough that an idle host holds only the daemon. Restarting it
# costs one interpreter start with the runtime's imports (~20 ms here from the bundle's byte code; an estimated
# 0.2-0.6 s in a TCG VM), paid by the next start and partly hidden by ForkServer.warm_up on create.
IDLE_EXIT = 60.0
IDLE_EXIT_ENV = "DOCKYARD_FORKSERVER_IDLE_EXIT"  # seconds; for tests that wait for the idle exit


class ForkServerError(RuntimeError):
    """The fork server is gone or refused a request."""


def idle_exit_seconds() -> float:
    """IDLE_EXIT, or the positive number of seconds in $DOCKYARD_FORKSERVER_IDLE_EXIT (read in the daemon)."""
    try:
        value = float(os.environ.get(IDLE_EXIT_ENV, ""))
    except ValueError:
        return IDLE_EXIT
    return value if value > 0 else IDLE_EXIT


def serve(sock: socket.socket, idle_exit: float) -> None:
    """The fork server's loop. Returns when the daemon goes away or after `idle_exit` seconds without a request."""
    while True:
        try:
            ready, _, _ = select.select([sock], [], [], idle_exit)
        except InterruptedError:
            continue
        if not ready:
            # Idle: refuse new requests first (the daemon's send fails and it starts a fresh server), then
            # serve the ones queued before that, so none is lost.
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                return
            sock.setblocking(False)
            while _serve_one(sock):
                pass
            return
        if not _serve_one(sock):
            return


def _serve_one(sock: socket.socket) -> bool:
    """Receive one request and fork its child. False when there is nothing more to receive."""
    try:
        msg, fds = channel.recv(sock, with_fds=True)
    except (channel.ChannelClosed, BlockingIOError):
        return False
    except InterruptedError:
        return True
    except (OSError, ValueError):
        return False
    op = msg.get("op") if isinstance(msg, dict) else None
    target = TARGETS.get(op) if isinstance(op, str) else None
    if target is None:
        for fd in fds:
            os.close(fd)
        return True
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
        return True
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
    return True


def main(argv: "list[str] | None" = None) -> int:
    """The fork server process: argv = [socket fd, idle seconds, the daemon's pid]."""
    args = sys.argv[1:] if argv is None else argv
    fd, idle_exit, daemon_pid = int(args[0]), float(args[1]), int(args[2])
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon_pid:
        return 0  # the daemon died before the line above: nobody to serve
    libc.set_process_name("dockyard-fork")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # a signal the daemon ignored stays ignored across exec
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on a foreground engine: the daemon decides
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    try:
        serve(sock, idle_exit)
    finally:
        sock.close()
    return 0


# The fork server's command: a fresh interpreter without site (-S) and isolated from the environment and the
# working directory (-I), importing the engine from where this daemon imported it (the source tree, or the
# zipapp bundle with its byte code).
_ENTRY = "import sys; sys.path.insert(0, %r); from dockyard.engine.runtime.forkserver import main; sys.exit(main())"


def _import_root() -> str:
    """The sys.path entry this daemon imported the `dockyard` package from (a directory or the .pyz)."""
    import dockyard

    return os.path.dirname(os.path.dirname(os.path.abspath(dockyard.__file__)))


class ForkServer:
    """Daemon side: starts the fork server on demand, hands it work, and starts a fresh one after its idle exit."""

    def __init__(self, idle_exit: "float | None" = None) -> None:
        self.idle_exit = idle_exit_seconds() if idle_exit is None else idle_exit
        self.sock: "socket.socket | None" = None
        self.proc = None  # subprocess.Popen of the running server
        self._lock = threading.Lock()

    @property
    def pid(self) -> "int | None":
        proc = self.proc
        return None if proc is None or proc.returncode is not None else proc.pid

    def start(self) -> None:
        """Start the server now if none runs (a container start is likely soon: it then finds it warm)."""
        with self._lock:
            self._ensure()

    def warm_up(self) -> None:
        """start(), for a request that makes a container start likely (a create): the server's interpreter
        starts while the client still talks to the daemon. A failure is left for the request that needs it."""
        try:
            self.start()
        except ForkServerError:
            pass

    def request(self, op: str, spec: dict, fds: list) -> None:
        """Hand `op` to the server, starting one if needed; ForkServerError if that cannot be done."""
        with self._lock:
            error = None
            for _attempt in range(2):
                self._ensure()
                try:
                    channel.send(self.sock, {"op": op, "spec": spec}, fds)
                    return
                except OSError as exc:
                    # It shut its socket down for its idle exit (or died): nothing of ours was queued, it still
                    # serves what was. A fresh server, once.
                    error = exc
                    self._forget()
            raise ForkServerError("the fork server is gone: %s" % error)

    def _ensure(self) -> None:
        if self.sock is not None:
            return
        import subprocess  # the daemon's side only: the server never imports it

        parent, child = channel.pair()
        argv = [sys.executable, "-S", "-I", "-c", _ENTRY % _import_root()]
        argv += [str(child.fileno()), repr(self.idle_exit), str(os.getpid())]
        argv += ["--"] + sys.argv[1:]  # ignored; ps shows the server and its children with the daemon's options
        spawned: dict = {}
        ready = threading.Event()

        def parent_thread() -> None:
            # PR_SET_PDEATHSIG fires when the server's parent *thread* ends: this one lives exactly as long as the
            # server (it reaps it), not as long as the request thread that happened to start it.
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True, pass_fds=(child.fileno(),))
            except (OSError, ValueError) as exc:
                spawned["error"] = exc
                ready.set()
                return
            spawned["proc"] = proc
            ready.set()
            proc.wait()

        try:
            threading.Thread(target=parent_thread, name="fork-server", daemon=True).start()
        except RuntimeError as exc:  # out of threads
            spawned["error"] = exc
            ready.set()
        ready.wait()
        child.close()
        if "error" in spawned:
            parent.close()
            raise ForkServerError("cannot start the fork server: %s" % spawned["error"])
        self.sock = parent
        self.proc = spawned["proc"]

    def _forget(self) -> None:
        # Not killed: an idle server still forks what was queued before it shut its socket down.
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.proc = None

    def stop(self) -> None:
        """Stop the running server (the daemon's shutdown); supervisors and exec helpers keep running."""
        with self._lock:
            proc = self.proc
            self._forget()
            if proc is not None:
                try:
                    proc.kill()  # safe while its thread waits: the pid is not reaped before that wait returns
                except OSError:
                    pass
                try:
                    proc.wait(timeout=5)
                except Exception:
                    pass
