"""Listening sockets from -H specs: unix sockets (0660) and TCP, with the server's mTLS context."""

import grp
import logging
import os
import socket
import ssl
import stat
from urllib.parse import urlsplit

log = logging.getLogger("dockyard.engine")

DEFAULT_UNIX_SOCKET = "/run/dockyard/engine.sock"
DEFAULT_TLS_PORT = 2376
DEFAULT_PLAIN_PORT = 2375


class ListenerError(Exception):
    """A host spec that cannot be parsed or bound; the daemon reports it and exits 1."""


class HostSpec:
    """A parsed -H value: scheme 'unix' (path) or 'tcp' (host, port)."""

    def __init__(self, scheme, path=None, host=None, port=None, raw=""):
        self.scheme = scheme
        self.path = path
        self.host = host
        self.port = port
        self.raw = raw

    def __repr__(self):
        return "HostSpec(%r)" % (self.raw,)


def parse_host(spec, tls=True):
    """'unix:///p', 'unix://', 'tcp://IP:PORT', 'tcp://:PORT', 'tcp://[::1]:2376' -> HostSpec."""
    spec = spec.strip()
    if spec.startswith("unix://"):
        path = spec[len("unix://") :] or DEFAULT_UNIX_SOCKET
        if not path.startswith("/"):
            raise ListenerError("unix socket path must be absolute: %s" % spec)
        return HostSpec("unix", path=path, raw=spec)
    if spec.startswith("tcp://"):
        parts = urlsplit(spec)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ListenerError("invalid tcp address (no path allowed): %s" % spec)
        try:
            port = parts.port
        except ValueError:
            raise ListenerError("invalid port in %s" % spec) from None
        if port is None:
            port = DEFAULT_TLS_PORT if tls else DEFAULT_PLAIN_PORT
        host = parts.hostname or "0.0.0.0"
        return HostSpec("tcp", host=host, port=port, raw=spec)
    if spec.startswith("fd://"):
        raise ListenerError("fd:// (socket activation) is not supported; use unix:// or tcp://")
    raise ListenerError("invalid host %r: use unix:///path or tcp://IP:PORT" % spec)


def make_server_tls_context(cacert, cert, key):
    """Mutual TLS: our cert chain, clients must present a cert signed by `cacert`, TLS >= 1.2."""
    for label, path in (("tlscacert", cacert), ("tlscert", cert), ("tlskey", key)):
        if not path:
            raise ListenerError("--tlsverify needs --%s" % label)
        if not os.path.isfile(path):
            raise ListenerError("--%s: no such file: %s" % (label, path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=cacert)
    except (ssl.SSLError, OSError) as exc:
        raise ListenerError("cannot load TLS files: %s" % exc) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Listener:
    """A bound, listening socket; tls_context is swapped in place on SIGHUP."""

    def __init__(self, spec, sock, tls_context=None):
        self.spec = spec
        self.sock = sock
        self.tls_context = tls_context
        self._unix_ino = None
        if spec.scheme == "unix":
            self._unix_ino = os.stat(spec.path).st_ino

    @property
    def address(self):
        """What the log line 'API listen on ...' shows (the real port when 0 was asked)."""
        if self.spec.scheme == "unix":
            return self.spec.path
        host, port = self.sock.getsockname()[:2]
        if ":" in host:
            return "[%s]:%d" % (host, port)
        return "%s:%d" % (host, port)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        if self.spec.scheme == "unix":
            # Only remove the file if it is still ours (a new daemon may have replaced it).
            try:
                if os.stat(self.spec.path).st_ino == self._unix_ino:
                    os.unlink(self.spec.path)
            except OSError:
                pass


def _bind_unix(path, group):
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenerError("%s exists and is not a socket" % path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket from a previous run
        else:
            raise ListenerError("%s is in use by another process" % path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # umask around bind so the socket never exists with looser permissions than 0660.
    old = os.umask(0o117)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ListenerError("cannot bind %s: %s" % (path, exc)) from None
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.debug("group %s not found; %s stays owned by the daemon's group", group, path)
        else:
            try:
                os.chown(path, -1, gid)
            except OSError as exc:
                log.warning("cannot chown %s to group %s: %s", path, group, exc)
    return sock


def _bind_tcp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenerError("cannot listen on %s:%d: %s" % (host, port, exc)) from None
    return sock


def open_listener(spec, tls_context=None, group=None, backlog=128):
    if spec.scheme == "unix":
        sock = _bind_unix(spec.path, group)
    else:
        sock = _bind_tcp(spec.host, spec.port)
    sock.listen(backlog)
    sock.setblocking(False)  # the accept loop uses a selector
    return Listener(spec, sock, tls_context)
