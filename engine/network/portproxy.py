"""Userland TCP/UDP forwarders for published ports; they run inside a container's supervisor.

One listening socket per published (host ip, host port, proto), forwarding to the
container's address. Everything is non-blocking and driven by a `selectors` selector
without threads: the supervisor cannot start threads at all (it unshared a pid
namespace for the container, and clone(CLONE_THREAD) then fails). The caller passes its
own selector to start(); every fd registered there carries the data ("proxy", handler)
and the caller's loop calls handler(events). Without a selector, start() runs a private
loop in a thread instead (tests, or any process that may have threads). Only the
standard library is used: the supervisor must not pay for importing netlink code.
"""

import errno
import os
import selectors
import socket
import threading
import time

TAG = "proxy"  # first item of the data of every selector key a proxy registers
UDP_IDLE_TIMEOUT = 90.0  # seconds of silence before a UDP peer's flow is dropped (as docker-proxy)
MAX_TCP_CONNECTIONS = 1024
MAX_UDP_FLOWS = 1024
BUFFER_LIMIT = 256 * 1024  # per direction; beyond it the sending side is not read (backpressure)
_CHUNK = 65536
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


class PortBindError(OSError):
    """A published port could not be bound; the message is what the docker CLI shows."""

    def __str__(self):
        return self.strerror or super().__str__()


def family_of(address):
    """AF_INET6 for an IPv6 address text, AF_INET otherwise."""
    return socket.AF_INET6 if ":" in str(address) else socket.AF_INET


def _bind_error(proto, host_ip, host_port, exc):
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "cannot assign requested address"
    return PortBindError(
        exc.errno,
        "Error starting userland proxy: listen %s%s %s: bind: %s"
        % (proto, "6" if ":" in host_ip else "4", _host_port_text(host_ip, host_port), reason),
    )


def _host_port_text(host_ip, host_port):
    return "[%s]:%s" % (host_ip, host_port) if ":" in host_ip else "%s:%s" % (host_ip, host_port)


def _close(sock):
    try:
        sock.close()
    except OSError:
        pass


class _Registrar:
    """Keeps a socket's interest in the selector in step; events 0 means unregistered."""

    def __init__(self, selector):
        self.sel = selector

    def set(self, sock, events, handler):
        if sock.fileno() < 0:
            return
        try:
            key = self.sel.get_key(sock)
        except (KeyError, ValueError):
            key = None
        if key is None:
            if events:
                self.sel.register(sock, events, (TAG, handler))
        elif not events:
            self.sel.unregister(sock)
        elif key.events != events:
            self.sel.modify(sock, events, (TAG, handler))

    def drop(self, sock):
        self.set(sock, 0, None)
        _close(sock)


class _ThreadLoop:
    """A private selector loop in a thread, for callers that bring no selector."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self.sel.register(self._wake_r, _R, None)
        self._stopping = False
        self._ticks = []
        self.thread = threading.Thread(target=self._run, name="port-proxy", daemon=True)

    def _run(self):
        while not self._stopping:
            for key, events in self.sel.select(timeout=5.0):
                if key.data is None:
                    continue
                if not self._stopping:
                    key.data[1](events)
            for tick in self._ticks:
                tick()

    def halt(self):
        """End the thread; the selector stays usable for the owner's cleanup."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        self.thread.join(10)

    def close(self):
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class _Proxy:
    proto = ""

    def __init__(self, host_ip, host_port, target_ip, target_port):
        self.host_ip = host_ip or "0.0.0.0"
        self.host_port = int(host_port)
        self.target = (str(target_ip), int(target_port))
        self.sock = None
        self._reg = None
        self._own_loop = None

    def __repr__(self):
        return "<%s %s:%d -> %s:%d>" % (
            type(self).__name__,
            self.host_ip,
            self.host_port,
            self.target[0],
            self.target[1],
        )

    def _listen_socket(self, kind):
        family = family_of(self.host_ip)
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # [::] takes IPv6 only: 0.0.0.0 is a binding of its own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.host_ip, self.host_port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
        except OSError as exc:
            _close(sock)
            raise _bind_error(self.proto, self.host_ip, self.host_port, exc) from None
        sock.setblocking(False)
        return sock

    def start(self, selector=None):
        """Bind now (PortBindError with the CLI's wording) and serve through `selector`.

        With a selector, the caller's loop must call key.data[1](events) for keys whose
        data[0] == TAG. Without one, a private loop thread serves.
        """
        if self.sock is not None:
            return self
        self.sock = self._bind()
        if selector is None:
            self._own_loop = _ThreadLoop()
            selector = self._own_loop.sel
            self._own_loop._ticks.append(self.tick)
        self._reg = _Registrar(selector)
        self._reg.set(self.sock, _R, self._on_listener)
        if self._own_loop is not None:
            self._own_loop.thread.start()
        return self

    def stop(self):
        """Stop listening and drop every forwarded connection; idempotent. Call it from the
        thread that runs the selector (or any thread when start() had no selector)."""
        if self.sock is None:
            return
        if self._own_loop is not None:
            self._own_loop.halt()
        self._drop_all()
        self._reg.drop(self.sock)
        self.sock = None
        if self._own_loop is not None:
            self._own_loop.close()
            self._own_loop = None

    def tick(self):
        """Periodic housekeeping; optional (UDP flows also expire on traffic)."""


class _TcpConn:
    """One forwarded connection: client <-> upstream (the container), with half-close."""

    def __init__(self, proxy, client):
        self.proxy = proxy
        self.reg = proxy._reg
        self.client = client
        self.upstream = socket.socket(family_of(proxy.target[0]), socket.SOCK_STREAM)
        self.upstream.setblocking(False)
        self.connecting = True
        self.closed = False
        self.to_up = bytearray()
        self.to_client = bytearray()
        self.eof = {client: False, self.upstream: False}  # read side reached EOF
        self.shut = {client: False, self.upstream: False}  # we sent FIN on it
        err = self.upstream.connect_ex(proxy.target)
        if err not in (0, errno.EINPROGRESS):
            self.close()
            return
        self._update()

    def _peer(self, sock):
        return self.upstream if sock is self.client else self.client

    def _outbox(self, sock):
        """Bytes waiting to be written to `sock`."""
        return self.to_client if sock is self.client else self.to_up

    def _update(self):
        if self.closed:
            return
        for sock in (self.client, self.upstream):
            if sock is self.upstream and self.connecting:
                self.reg.set(sock, _W, self._on_upstream)
                continue
            events = 0
            inbox = self._outbox(self._peer(sock))  # what we read from sock goes there
            if not self.eof[sock] and len(inbox) < BUFFER_LIMIT:
                events |= _R
            if self._outbox(sock):
                events |= _W
            handler = self._on_client if sock is self.client else self._on_upstream
            self.reg.set(sock, events, handler)

    def _on_client(self, events):
        self._io(self.client, events)

    def _on_upstream(self, events):
        if self.closed:
            return
        if self.connecting:
            err = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                # Nothing listens in the container (yet): the client sees a closed connection.
                self.close()
                return
            self.connecting = False
            self._update()
            return
        self._io(self.upstream, events)

    def _io(self, sock, events):
        if self.closed:
            return
        peer = self._peer(sock)
        try:
            if events & _R:
                try:
                    data = sock.recv(_CHUNK)
                except OSError as exc:
                    if exc.errno not in _RETRY:
                        raise
                else:
                    if data:
                        self._outbox(peer).extend(data)
                    else:
                        self.eof[sock] = True
            if events & _W:
                out = self._outbox(sock)
                if out:
                    try:
                        sent = sock.send(out)
                        del out[:sent]
                    except OSError as exc:
                        if exc.errno not in _RETRY:
                            raise
            for side in (self.client, self.upstream):
                other = self._peer(side)
                # EOF read from `other` and everything flushed to `side`: pass the FIN on.
                if (
                    self.eof[other]
                    and not self._outbox(side)
                    and not self.shut[side]
                    and not (side is self.upstream and self.connecting)
                ):
                    side.shutdown(socket.SHUT_WR)
                    self.shut[side] = True
        except OSError:
            self.close()
            return
        if all(self.shut.values()):
            self.close()
            return
        self._update()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.reg.drop(self.client)
        self.reg.drop(self.upstream)
        self.proxy._conns.discard(self)


class TcpProxy(_Proxy):
    """Accepts on host_ip:host_port and splices each connection to the container's port."""

    proto = "tcp"

    def __init__(self, *args):
        super().__init__(*args)
        self._conns = set()

    def _bind(self):
        return self._listen_socket(socket.SOCK_STREAM)

    def _on_listener(self, events):
        while self.sock is not None:
            try:
                client, _ = self.sock.accept()
            except OSError:
                # EAGAIN: nothing left; EMFILE and friends: try again on the next wakeup
                return
            if len(self._conns) >= MAX_TCP_CONNECTIONS:
                _close(client)
                continue
            client.setblocking(False)
            conn = _TcpConn(self, client)
            if not conn.closed:
                self._conns.add(conn)

    def _drop_all(self):
        for conn in list(self._conns):
            conn.close()


class _Flow:
    __slots__ = ("sock", "last")

    def __init__(self, sock):
        self.sock = sock
        self.last = time.monotonic()


class UdpProxy(_Proxy):
    """Relays datagrams: one connected socket per client address carries its replies back."""

    proto = "udp"

    def __init__(self, *args):
        super().__init__(*args)
        self._flows = {}
        self._last_sweep = time.monotonic()

    def _bind(self):
        return self._listen_socket(socket.SOCK_DGRAM)

    def _on_listener(self, events):
        while self.sock is not None:
            try:
                data, peer = self.sock.recvfrom(_CHUNK)
            except OSError as exc:
                if exc.errno in _RETRY:
                    break
                continue  # e.g. ECONNREFUSED queued for an earlier sendto
            flow = self._flow_for(peer)
            if flow is None:
                continue
            try:
                flow.sock.send(data)
            except OSError:
                pass  # the container refused (ICMP) or is busy; the client's retry decides
            flow.last = time.monotonic()
        self.tick()

    def _flow_for(self, peer):
        flow = self._flows.get(peer)
        if flow is not None:
            return flow
        if len(self._flows) >= MAX_UDP_FLOWS:
            self.tick(force=True)
            if len(self._flows) >= MAX_UDP_FLOWS:
                return None
        sock = socket.socket(family_of(self.target[0]), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.target)
        except OSError:
            _close(sock)
            return None
        flow = self._flows[peer] = _Flow(sock)
        self._reg.set(sock, _R, lambda events, peer=peer, flow=flow: self._on_reply(peer, flow))
        return flow

    def _on_reply(self, peer, flow):
        if self._flows.get(peer) is not flow or self.sock is None:
            return
        while True:
            try:
                data = flow.sock.recv(_CHUNK)
            except OSError as exc:
                if exc.errno in _RETRY:
                    return
                continue  # ECONNREFUSED: the container had no listener for one datagram
            flow.last = time.monotonic()
            try:
                self.sock.sendto(data, peer)
            except OSError:
                pass

    def tick(self, force=False):
        now = time.monotonic()
        if not force and now - self._last_sweep < 5.0:
            return
        self._last_sweep = now
        for peer, flow in list(self._flows.items()):
            if now - flow.last >= UDP_IDLE_TIMEOUT:
                del self._flows[peer]
                self._reg.drop(flow.sock)

    def _drop_all(self):
        for flow in self._flows.values():
            self._reg.drop(flow.sock)
        self._flows.clear()


def proxies_for(settings):
    """Proxies for every published port of a container's NetworkSettings (not started). An IPv6 host
    address forwards to the container's IPv6 address when it has one, else to its IPv4 one (as
    docker-proxy does for dockerd 20.10's IPv6 bindings)."""
    target_ip = settings.get("IPAddress") or ""
    target_ip6 = settings.get("GlobalIPv6Address") or ""
    for endpoint in (settings.get("Networks") or {}).values():
        # user-defined networks leave the deprecated top-level addresses empty
        target_ip = target_ip or (endpoint or {}).get("IPAddress") or ""
        target_ip6 = target_ip6 or (endpoint or {}).get("GlobalIPv6Address") or ""
    if not target_ip:
        return []
    out = []
    for key, bindings in sorted((settings.get("Ports") or {}).items()):
        if not bindings:
            continue
        port_text, _, proto = key.partition("/")
        proto = proto or "tcp"
        cls = {"tcp": TcpProxy, "udp": UdpProxy}.get(proto)
        if cls is None:
            continue
        for binding in bindings:
            host_ip = binding.get("HostIp") or "0.0.0.0"
            target = (target_ip6 or target_ip) if ":" in host_ip else target_ip
            out.append(cls(host_ip, int(binding["HostPort"]), target, int(port_text)))
    return out


def start_all(proxies, selector=None):
    """Start every proxy; if one fails to bind, stop those already started and re-raise."""
    started = []
    try:
        for proxy in proxies:
            proxy.start(selector)
            started.append(proxy)
    except BaseException:
        for proxy in started:
            proxy.stop()
        raise
    return started
