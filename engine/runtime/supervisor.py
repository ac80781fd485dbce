"""The per-container supervisor: owns the container's first process for its whole life.

Forked from the fork server, it detaches (setsid), creates the cgroup, forks the container
process into new namespaces (containerinit), relays its stdio (pipes or a pty) to the json-file
log and to attached clients, serves control requests (kill, resize, attach, state) on a
SEQPACKET socket that the engine reconnects to after a restart, and records the exit status
(exit.json) before telling the engine and exiting. It never depends on the engine being up.
The stdio streams and attached clients are stdiorelay.StdioRelay's, on this supervisor's selector.
"""

import os
import selectors
import signal
import socket
import struct
import time

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.network import portproxy
from dockyard.engine.runtime import channel, containerinit, libc, logs, procident, userns
from dockyard.engine.runtime.cgroups import Cgroup, CgroupError
from dockyard.engine.runtime.stdiorelay import STDERR, STDOUT, StdioRelay
from dockyard.engine.timefmt import rfc3339nano_ns

DRAIN_AFTER_EXIT = 2.0  # seconds to wait for output EOF once the process died
FLUSH_CLIENTS = 5.0
CTL_SEND_TIMEOUT = 2.0
_PR_SET_CHILD_SUBREAPER = 36


def exit_status(status):
    """waitpid status -> Docker's exit code (128+signal for a killed process)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


class Supervisor:
    def __init__(self, spec, ctl_sock, attach):
        self.spec = spec
        self.id = spec["id"]
        self.tty = bool(spec.get("tty"))
        self.open_stdin = bool(spec.get("open_stdin"))
        self.stdin_once = bool(spec.get("stdin_once"))
        self.sel = selectors.DefaultSelector()
        self.controls = []
        self.stdio = StdioRelay(self.sel, self.tty, self.stdin_once)  # output, input, attached clients
        self.pid = None
        self.pidfd = None
        self.status = None
        self.exited_at = None
        self.started_at = None
        self.listener = None
        self.cgroup = Cgroup.from_dict(spec.get("cgroup"))
        self.proxies = []
        self.settings = None
        self._add_control(ctl_sock)
        for sock, opts in attach:
            self.stdio.add_client(sock, opts)

    # -- setup ---------------------------------------------------------------------------
    def _add_control(self, sock):
        sock.settimeout(CTL_SEND_TIMEOUT)
        self.controls.append(sock)
        self.sel.register(sock, selectors.EVENT_READ, ("ctl", sock))

    def notify(self, obj):
        for sock in list(self.controls):
            try:
                channel.send(sock, obj)
            except OSError:
                self._drop_control(sock)

    def _drop_control(self, sock):
        if sock in self.controls:
            self.controls.remove(sock)
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()

    def fail(self, message, code=127):
        self.notify({"event": "failed", "error": message, "code": code})

    def run(self):
        spec = self.spec
        if self.cgroup is not None:
            try:
                self.cgroup.create(spec.get("resources") or {}, bool(spec.get("privileged")))
            except CgroupError as exc:
                self.fail(str(exc), 125)
                return 1
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.unlink(spec["sock"])
        except FileNotFoundError:
            pass
        self.listener.bind(spec["sock"])
        os.chmod(spec["sock"], 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.stdio.log = logs.open_log_writer(spec["log"], spec.get("log_driver"), spec.get("log_opts"))

        child_stdio = None
        parent_close = []
        if not self.tty:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            if self.open_stdin:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                self.stdio.stdin_fd = in_w
            else:
                in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            child_stdio = (in_r, out_w, err_w)
            parent_close = [in_r, out_w, err_w]
            self.stdio.outputs = {out_r: STDOUT, err_r: STDERR}
        sync_s, sync_c = channel.pair()
        idmap = spec["init"].get("userns")
        if idmap:
            # The child makes the user namespace and the PID namespace it owns, forks the container's
            # PID 1 and exits: that process is re-parented to us.
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
        elif spec["init"]["namespaces"].get("pid", True):
            libc.unshare(libc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            self._child(sync_s, sync_c, child_stdio)
        sync_c.close()
        for fd in parent_close:
            os.close(fd)
        if idmap:
            pid = self._map_user_namespace(sync_s, pid, idmap)
            if pid is None:
                return 1
        self.pid = pid
        if not idmap:
            try:
                self.pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                self.pidfd = None
        init_ns = spec["init"]["namespaces"]
        if self.cgroup is not None and not (self.cgroup.version == "2" or init_ns.get("cgroup")):
            try:
                self.cgroup.join(pid)  # before "go": the command never runs outside its cgroup
            except OSError as exc:
                os.kill(pid, signal.SIGKILL)
                self._reap(block=True)
                self.fail("cannot join the container's cgroup: %s" % exc, 125)
                self._cleanup()
                return 1
        if not self._handshake(sync_s):
            return 1
        for fd in self.stdio.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("out", fd))
        if self.stdio.stdin_fd is not None:
            os.set_blocking(self.stdio.stdin_fd, False)
        if self.pidfd is not None:
            self.sel.register(self.pidfd, selectors.EVENT_READ, ("exit", None))
        self.sel.register(self.listener, selectors.EVENT_READ, ("listen", None))
        self._start_proxies()
        self.loop()
        return 0

    def _child(self, sync_s, sync_c, stdio):
        try:
            sync_s.close()
            for sock in self.controls:
                sock.close()
            for client in self.stdio.clients:
                client.sock.close()
            self.listener.close()
            self.stdio.log.close()
            for fd in self.stdio.outputs:
                os.close(fd)
            if self.stdio.stdin_fd is not None:
                os.close(self.stdio.stdin_fd)
            containerinit.main(self.spec["init"], sync_c, stdio)
        finally:
            os._exit(127)

    def _map_user_namespace(self, sync, child, idmap):
        """The child's user namespace exists: write its id maps, learn the container's PID 1, reap the child."""
        init = None
        try:
            msg = channel.recv(sync)
            if "error" not in msg:
                userns.write_maps(child, idmap)
                channel.send(sync, {"mapped": True})
                msg = channel.recv(sync)
                init = msg.get("init")
        except (channel.ChannelClosed, OSError) as exc:
            msg = {"error": "cannot set up the container's user namespace: %s" % exc, "code": 127}
        if init is None:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        os.waitpid(child, 0)  # once reaped, the container's PID 1 is our child
        if init is None:
            self.fail(msg.get("error", "container init died during setup"), int(msg.get("code", 127)))
            self._cleanup()
            return None
        try:
            self.pidfd = os.pidfd_open(init)
        except (AttributeError, OSError):
            self.pidfd = None
        channel.send(sync, {"continue": True})
        return int(init)

    def _handshake(self, sync):
        """ns ready -> (network hook) -> go -> tty master -> execve (EOF) or error."""
        try:
            msg, fds = channel.recv(sync, with_fds=True)
        except (channel.ChannelClosed, OSError):
            msg, fds = {"error": "container init died during setup", "code": 127}, []
        if "error" in msg:
            return self._start_failed(msg)
        go = {"go": True}
        if self.spec.get("network_hook"):
            self.notify({"event": "netns", "pid": self.pid})
            reply = self._wait_control(("go", "abort"))
            if reply is None or reply.get("op") != "go":
                channel.send(sync, {"abort": True})
                self._reap(block=True)
                self._cleanup()
                return False
            self.settings = reply.get("settings")
        try:
            channel.send(sync, go)
        except OSError:
            pass  # the init died: its error report is still queued on `sync`
        while True:
            try:
                msg, fds = channel.recv(sync, with_fds=True)
            except channel.ChannelClosed:
                break  # execve closed the socket: the command runs
            except OSError:
                break
            if "error" in msg:
                return self._start_failed(msg)
            if msg.get("tty") and fds:
                self.stdio.master = fds[0]
                os.set_blocking(self.stdio.master, False)
                self.stdio.outputs = {self.stdio.master: STDOUT}
                self.stdio.stdin_fd = None
        sync.close()
        self.started_at = time.time_ns()
        # The start time pins the PID (procident): read now, while our unreaped child cannot be recycled.
        try:
            pid_start = procident.start_time(self.pid)
        except procident.ProcessGone:
            pid_start = None  # exited already (a short command): nothing will be exec'd into it
        self.notify({"event": "started", "pid": self.pid, "pid_start": pid_start, "started_at": self.started_at})
        return True

    def _start_failed(self, msg):
        self._reap(block=True)
        self.fail(msg.get("error", "start failed"), int(msg.get("code", 127)))
        self._cleanup()
        return False

    def _wait_control(self, ops, timeout=120.0):
        """Block for one of `ops` from any control connection (start-time handshake)."""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        try:
            for sock in self.controls:
                sel.register(sock, selectors.EVENT_READ)
            while self.controls and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    sock = key.fileobj
                    try:
                        msg, fds = channel.recv(sock, with_fds=True)
                    except (channel.ChannelClosed, OSError):
                        sel.unregister(sock)
                        self._drop_control(sock)
                        continue
                    for fd in fds:
                        os.close(fd)
                    if msg.get("op") in ops:
                        return msg
            return None
        finally:
            sel.close()

    def _start_proxies(self):
        if not self.settings or not (self.settings.get("Ports") or {}):
            return
        try:
            # network part: no threads here (CLONE_NEWPID); the proxies run on this loop's selector
            self.proxies = portproxy.start_all(portproxy.proxies_for(self.settings), self.sel)
        except Exception as exc:  # the container runs; the port stays unpublished
            self.stdio.log.write("stderr", ("dockyard: port publishing failed: %s\n" % exc).encode())

    # -- main loop --------------------------------------------------------------------------
    def loop(self):
        drain_deadline = None
        while True:
            if self.status is not None:
                if not self.stdio.outputs:
                    break
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT
                if time.monotonic() >= drain_deadline:
                    break
            self.stdio.update_interest()
            timeout = None
            if self.pidfd is None:
                timeout = 0.05
            if drain_deadline is not None:
                timeout = max(0.0, drain_deadline - time.monotonic())
            for key, events in self.sel.select(timeout):
                kind, obj = key.data
                if kind == "out":
                    self.stdio.read_output(obj)
                elif kind == "exit":
                    self._reap(block=True)
                elif kind == "ctl":
                    self._control(obj)
                elif kind == "listen":
                    self._accept()
                elif kind == "client":
                    self.stdio.client_io(obj, events)
                elif kind == "stdin":
                    self.stdio.write_stdin()
                elif kind == "proxy":  # network part: published-port forwarders (portproxy.TAG)
                    obj(events)
            if self.pidfd is None and self.status is None:
                self._reap(block=False)
        self._finish()

    def _reap(self, block):
        if self.status is not None or self.pid is None:
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self.status = status
        self.exited_at = time.time_ns()
        if self.pidfd is not None:
            try:
                self.sel.unregister(self.pidfd)
            except (KeyError, ValueError):
                pass
            os.close(self.pidfd)
            self.pidfd = None

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._add_control(sock)

    def _control(self, sock):
        try:
            msg, fds = channel.recv(sock, with_fds=True)
        except (channel.ChannelClosed, OSError):
            self._drop_control(sock)
            return
        op = msg.get("op")
        if op == "attach" and fds:
            client = self.stdio.add_client(socket.socket(fileno=fds[0]), msg)
            for fd in fds[1:]:
                os.close(fd)
            if self.status is not None and not self.stdio.outputs:
                self.stdio.close_client(client)
            return
        for fd in fds:
            os.close(fd)
        if op == "kill":
            self._signal(int(msg.get("signal", signal.SIGKILL)))
        elif op == "resize":
            self._resize(msg.get("h"), msg.get("w"))
        elif op == "state":
            try:
                channel.send(
                    sock,
                    {
                        "event": "state",
                        "pid": self.pid,
                        "started_at": self.started_at,
                        "running": self.status is None,
                        "settings": self.settings,
                    },
                )
            except OSError:
                self._drop_control(sock)
        elif op == "close_stdin":
            self.stdio.close_stdin()

    def _signal(self, sig):
        if self.status is not None or self.pid is None:
            return
        try:
            if self.pidfd is not None and hasattr(signal, "pidfd_send_signal"):
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except OSError:
            pass

    def _resize(self, h, w):
        if self.stdio.master is None:
            return
        try:
            containerinit.set_winsize(self.stdio.master, int(h or 0), int(w or 0))
        except (OSError, ValueError, TypeError, struct.error):  # a bad size must not end the container
            pass

    # -- exit ---------------------------------------------------------------------------------
    def _finish(self):
        for fd in list(self.stdio.outputs):
            self.stdio.close_output(fd)
        if self.stdio.master is not None:
            os.close(self.stdio.master)
            self.stdio.master = None
        self.stdio.log.close()
        code = exit_status(self.status if self.status is not None else 255 << 8)
        oom = False
        if self.cgroup is not None:
            oom = self.cgroup.oom_kills() > 0
            self.cgroup.kill_all()
            self.cgroup.remove()
        for proxy in self.proxies:
            try:
                proxy.stop()
            except Exception:
                pass
        record = {
            "run": self.spec.get("run"),
            "ExitCode": code,
            "OOMKilled": oom,
            "FinishedAt": rfc3339nano_ns(self.exited_at or time.time_ns()),
            "finished_ns": self.exited_at or time.time_ns(),
            "Pid": self.pid,
            "started_ns": self.started_at,
        }
        try:
            atomic_write_json(self.spec["exit_file"], record, durable=False, compact=True)
        except OSError:
            pass
        self.notify(dict(record, event="exited"))
        deadline = time.monotonic() + FLUSH_CLIENTS
        while any(c.out for c in self.stdio.clients) and time.monotonic() < deadline:
            for client in list(self.stdio.clients):
                self.stdio.flush_client(client)
            time.sleep(0.002)
        for client in list(self.stdio.clients):
            self.stdio.close_client(client)
        self._cleanup()

    def _cleanup(self):
        if self.listener is not None:
            try:
                os.unlink(self.spec["sock"])
            except OSError:
                pass
            self.listener.close()
        if self.cgroup is not None and self.cgroup.exists():
            self.cgroup.kill_all()
            self.cgroup.remove(timeout=1.0)
        for sock in list(self.controls):
            self._drop_control(sock)


def main(spec, fds):
    """Entry point in the forked child: fds[0] = control channel, fds[1:] = attach streams."""
    os.setsid()
    libc.set_process_name("dockyard-sv")
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    ctl = socket.socket(fileno=fds[0])
    attach = []
    for fd, opts in zip(fds[1:], spec.get("attach") or []):
        attach.append((socket.socket(fileno=fd), opts))
    sup = Supervisor(spec, ctl, attach)

    def forward(signum, frame):
        # Host shutdown: pass SIGTERM on, the exit is recorded as usual.
        sup._signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        return sup.run()
    except Exception as exc:
        try:
            with open(os.path.join(spec["dir"], "supervisor.log"), "a") as fh:
                fh.write("%s supervisor error: %r\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), exc))
                import traceback  # only on this path: every supervisor is a fork of the fork server, which has none

                traceback.print_exc(file=fh)
        except (OSError, ImportError):
            pass
        if sup.status is None and sup.pid:
            sup._signal(signal.SIGKILL)
        if sup.started_at is None:
            sup.fail("supervisor error: %s" % exc, 125)
        if sup.cgroup is not None:
            try:
                sup.cgroup.kill_all()
                sup.cgroup.remove(timeout=1.0)
            except OSError:
                pass
        return 1
