"""The daemon's lifecycle: config, listening sockets, signals, the main loop.

engine/daemon.py (the entry point) makes the fork server's handle; the fork server itself is a fresh interpreter
started on demand (engine/runtime/forkserver.py), so nothing imported here (the API, images, build, TLS) is in
it or in any container's setup process.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time

from dockyard.engine import __version__, memory
from dockyard.engine.api.admission import Admission, PendingConnection
from dockyard.engine.api.http import HttpServer
from dockyard.engine.api.routes import build_router, common_headers
from dockyard.engine.atomicfile import atomic_write
from dockyard.engine.buildinfo import build_info
from dockyard.engine.config import ConfigError, parse_config
from dockyard.engine.listeners import Listener, ListenerError, make_server_tls_context, open_listener, parse_host
from dockyard.engine.runtime.forkserver import ForkServer
from dockyard.engine.services import build_engine, load_or_create_engine_id, start_engine, stop_engine

log = logging.getLogger("dockyard.engine")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
DATA_ROOT_MODE = 0o710
_SIGNAL_NAMES = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupt", signal.SIGHUP: "hangup"}
ACCEPTS_PER_WAKEUP = 64  # then back to the loop: signals and pending connections get their turn
TRIM_AFTER_IDLE = 1.0  # seconds without a new connection before free malloc memory goes back (memory.trim)

INSECURE_TCP_WARNING = (
    "WARNING: API is accessible on http://%s without encryption. Anyone who can reach "
    "this address has root access on this host. Use --tlsverify with certificates instead."
)


class StartupError(Exception):
    """The daemon cannot start; reported on stderr with exit code 1."""


def setup_logging(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("dockyard")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False


def sd_notify(state):
    """Tell systemd (Type=notify units) about READY=1 / STOPPING=1; no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(addr)
            sock.sendall(state.encode("ascii"))
        finally:
            sock.close()
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", state, exc)


def _open_reserve_fd():
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Daemon:
    """Owns the listeners, the pid file and the main (accept + signal) loop."""

    def __init__(self, config, forkserver: ForkServer):
        self.config = config
        self.forkserver = forkserver  # starts its server on demand
        self.listeners: list[Listener] = []
        self.engine = None
        self.server = None
        self.tls_context = None
        self._pidfile_written = False
        self._sig_r = self._sig_w = None
        self._stopping = False
        self._old_wakeup_fd = None
        self.admission = None
        self._reserve_fd = None  # given up when accept() hits EMFILE, to accept and close one connection
        self._trim_at: float | None = None  # when to hand free memory back, once connections stop arriving

    # -- startup -------------------------------------------------------------
    def start(self):
        cfg = self.config
        memory.limit_arenas()  # before the first thread (engine/memory.py)
        try:
            specs = [parse_host(h, tls=cfg.tlsverify) for h in cfg.hosts]
        except ListenerError as exc:
            raise StartupError(str(exc)) from None
        tcp = [s for s in specs if s.scheme == "tcp"]
        if tcp and not cfg.tlsverify:
            if not cfg.insecure_tcp:
                raise StartupError(
                    "refusing to listen on %s without TLS: pass --tlsverify with --tlscacert, "
                    "--tlscert and --tlskey (or --insecure-tcp to accept that anyone who can "
                    "connect is root on this host)" % ", ".join(s.raw for s in tcp)
                )
        if tcp and cfg.tlsverify:
            try:
                self.tls_context = make_server_tls_context(cfg.tlscacert, cfg.tlscert, cfg.tlskey)
            except ListenerError as exc:
                raise StartupError(str(exc)) from None

        self._install_signals()
        try:
            os.makedirs(cfg.data_root, mode=DATA_ROOT_MODE, exist_ok=True)
            # 0710 root:root, also for a data-root made by an older engine (0711): no other host user
            # may walk in, e.g. to a setuid file a container left in a volume.
            if os.geteuid() == 0:
                os.chown(cfg.data_root, 0, 0)
            os.chmod(cfg.data_root, DATA_ROOT_MODE)
            # 0711, not 0700: the default unix socket lives here and the docker group must reach it.
            os.makedirs(cfg.exec_root, mode=0o711, exist_ok=True)
            engine_id = load_or_create_engine_id(cfg.data_root)
        except OSError as exc:
            raise StartupError("cannot prepare %s / %s: %s" % (cfg.data_root, cfg.exec_root, exc))
        self._write_pidfile()

        warnings = []
        for spec in specs:
            tls = self.tls_context if spec.scheme == "tcp" and cfg.tlsverify else None
            try:
                listener = open_listener(spec, tls_context=tls, group=cfg.group)
            except ListenerError as exc:
                raise StartupError(str(exc)) from None
            self.listeners.append(listener)
            if spec.scheme == "tcp" and tls is None:
                text = INSECURE_TCP_WARNING % listener.address
                warnings.append(text)
                # Loud on purpose: this is the one configuration that hands out root.
                sys.stderr.write("\n%s\n%s\n%s\n\n" % ("!" * 78, text, "!" * 78))
                sys.stderr.flush()

        # The engine's parts (engine/services.py); the runtime's fork server starts with the first container.
        try:
            self.engine = build_engine(cfg, engine_id, warnings, self.forkserver)
            start_engine(self.engine)
        except Exception as exc:
            log.exception("starting the engine's services failed")
            raise StartupError("cannot start the engine's services: %s" % exc) from None
        router = build_router(self.engine)
        self.server = HttpServer(router, common_headers(), context=self.engine)
        for listener in self.listeners:
            log.info("API listen on %s", listener.address)

    def _install_signals(self):
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)
        # The C-level handler writes the signal number to the pipe; the main loop reads it.
        self._old_wakeup_fd = signal.set_wakeup_fd(self._sig_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: None)

    def _write_pidfile(self):
        path = self.config.pidfile
        try:
            with open(path) as fh:
                old = int(fh.read().strip() or "0")
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid() and _pid_alive(old):
            raise StartupError("pid file found, ensure dockyard-engine is not running or delete %s" % path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, b"%d" % os.getpid(), durable=False)
        except OSError as exc:
            raise StartupError("cannot write pid file %s: %s" % (path, exc)) from None
        self._pidfile_written = True

    # -- main loop -------------------------------------------------------------
    def run(self):
        sel = selectors.DefaultSelector()
        for listener in self.listeners:
            sel.register(listener.sock, selectors.EVENT_READ, listener)
        sel.register(self._sig_r, selectors.EVENT_READ, None)
        # Handshakes and the wait for a first request run here, on this loop (api/admission.py).
        self.admission = Admission(sel, self.server.serve_ready)
        self._reserve_fd = _open_reserve_fd()
        sd_notify("READY=1")
        log.info("Daemon has completed initialization (version %s, pid %d)", __version__, os.getpid())
        self._trim_at = time.monotonic()  # what start-up freed goes back at once
        try:
            while not self._stopping:
                self._loop_once(sel)
        finally:
            if self.admission is not None:
                self.admission.close_all()
            if self._reserve_fd is not None:
                os.close(self._reserve_fd)
                self._reserve_fd = None
            sel.close()
            self.shutdown()
        return 0

    def _loop_once(self, sel):
        """One round of the main loop; an error in it is logged, never the end of the daemon."""
        try:
            events = sel.select(self._select_timeout())
            for key, _ in events:
                if key.data is None:
                    self._handle_signals()
                elif isinstance(key.data, PendingConnection):
                    self.admission.ready(key.data)
                else:
                    self._accept(key.data)
            self.admission.tick()
            if self._trim_at is not None and time.monotonic() >= self._trim_at:
                self._trim_at = None
                memory.trim()
        except Exception:
            log.exception("main loop error (the daemon keeps serving)")
            time.sleep(0.05)

    def _select_timeout(self):
        timeout = self.admission.timeout()
        if self._trim_at is None:
            return timeout
        until_trim = max(0.0, self._trim_at - time.monotonic())
        return until_trim if timeout is None else min(timeout, until_trim)

    def _accept(self, listener):
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed_connection(listener)
                else:
                    log.error("accept on %s failed: %s", listener.address, exc)
                    time.sleep(0.05)
                return
            self.admission.admit(sock, peer or listener.address, listener.tls_context)
            self._trim_at = time.monotonic() + TRIM_AFTER_IDLE

    def _shed_connection(self, listener):
        """Out of file descriptors: accept the waiting connection with the reserve fd and close it.

        The client sees its connection closed instead of hanging in the backlog, and the loop does
        not spin on a listener that stays readable.
        """
        log.error("accept on %s: out of file descriptors; refusing a connection", listener.address)
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
        try:
            sock, _ = listener.sock.accept()
            sock.close()
        except OSError:
            time.sleep(0.05)
        self._reserve_fd = _open_reserve_fd()

    def _handle_signals(self):
        try:
            data = os.read(self._sig_r, 64)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("Processing signal '%s'", _SIGNAL_NAMES[signum])
                self._stopping = True
            elif signum == signal.SIGHUP:
                self.reload_tls()

    def reload_tls(self):
        """SIGHUP: re-read the TLS files; new connections use them, a bad set keeps the old."""
        tcp = [l for l in self.listeners if l.tls_context is not None]
        if not tcp:
            log.info("SIGHUP: no TLS listener, nothing to reload")
            return False
        cfg = self.config
        try:
            ctx = make_server_tls_context(cfg.tlscacert, cfg.tlscert, cfg.tlskey)
        except ListenerError as exc:
            log.error("TLS reload failed, keeping the current certificates: %s", exc)
            return False
        self.tls_context = ctx
        for listener in tcp:
            listener.tls_context = ctx
        log.info("TLS certificates reloaded")
        return True

    # -- shutdown -------------------------------------------------------------
    def shutdown(self):
        sd_notify("STOPPING=1")
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        if self.engine is not None:
            try:
                stop_engine(self.engine)  # containers keep running (live restore)
            except Exception:
                log.exception("stopping the engine's services failed")
        self._remove_pidfile()
        if self._sig_w is not None:
            try:
                signal.set_wakeup_fd(self._old_wakeup_fd if self._old_wakeup_fd is not None else -1)
            except ValueError:
                pass
        log.info("Daemon shutdown complete")

    def _remove_pidfile(self):
        if not self._pidfile_written:
            return
        path = self.config.pidfile
        try:
            with open(path) as fh:
                ours = fh.read().strip() == str(os.getpid())
            if ours:
                os.unlink(path)
        except OSError:
            pass
        self._pidfile_written = False


def run_daemon(argv, forkserver: ForkServer):
    """Parse the command line and run the daemon until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        cfg, args = parse_config(argv)
    except ConfigError as exc:
        sys.stderr.write("dockyard-engine: error: %s\n" % exc)
        return 1
    if args.version:
        sys.stdout.write("dockyard-engine version %s, build %s\n" % (__version__, build_info()["commit"]))
        return 0
    if args.bundle_info:
        sys.stdout.write(json.dumps(build_info(), sort_keys=True) + "\n")
        return 0
    setup_logging(cfg.log_level)
    if cfg.config_file:
        log.info("using config file %s", cfg.config_file)
    daemon = Daemon(cfg, forkserver)
    try:
        daemon.start()
    except StartupError as exc:
        sys.stderr.write("dockyard-engine: error: %s\n" % exc)
        daemon.shutdown()
        return 1
    return daemon.run()
