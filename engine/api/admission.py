"""Connections before their first request: the TLS handshake and the wait for the first bytes.

They run on the daemon's selector, not on threads, so a connection that only connects (or stalls in
the handshake) costs one file descriptor and no thread. Their number is capped: when the cap is
reached, the oldest one waiting is closed to make room (a flood of idle connections cannot lock out a
real client, which handshakes in milliseconds). Each has a deadline: the handshake must end within
HANDSHAKE_TIMEOUT and the first request start within FIRST_REQUEST_TIMEOUT of the accept. A connection
that sent its first bytes goes to HttpServer.serve_ready, which refuses it when no thread is left.
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import ssl
import time
from typing import Callable, Deque, Dict

log = logging.getLogger("dockyard.engine.http")

MAX_PENDING = 128
HANDSHAKE_TIMEOUT = 30.0  # generous: a loaded host (or a slow client) can take seconds; slots are capped anyway
FIRST_REQUEST_TIMEOUT = 30.0


class PendingConnection:
    """One accepted socket on the selector: handshaking (TLS) or waiting for the first request bytes."""

    __slots__ = ("sock", "peer", "deadline", "handshaking", "accepted_at", "closed")

    def __init__(self, sock: socket.socket, peer: object, handshaking: bool, deadline: float, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.handshaking = handshaking
        self.deadline = deadline
        self.accepted_at = now
        self.closed = False


class Admission:
    """Owns the pending connections of every listener; the daemon's loop feeds it events and ticks."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        hand_off: Callable[[socket.socket, object], bool],
        max_pending: int = MAX_PENDING,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.selector = selector
        self.hand_off = hand_off  # (blocking socket, peer) -> False when it was refused (and closed)
        self.max_pending = max_pending
        self.handshake_timeout = handshake_timeout
        self.first_request_timeout = first_request_timeout
        self.clock = clock
        self.order: Deque[PendingConnection] = collections.deque()  # oldest first (may hold closed ones)
        self.live: Dict[int, PendingConnection] = {}
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self.live)

    def admit(self, sock: socket.socket, peer: object, tls_context: ssl.SSLContext | None) -> None:
        """Take a freshly accepted socket; it is served once its first request bytes arrive."""
        while len(self.live) >= self.max_pending:
            self._evict_oldest()
        now = self.clock()
        try:
            sock.setblocking(False)
            if tls_context is not None:
                sock = tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.debug("dropping connection from %s: %s", peer, exc)
            _close(sock)
            return
        handshaking = tls_context is not None
        deadline = now + (self.handshake_timeout if handshaking else self.first_request_timeout)
        conn = PendingConnection(sock, peer, handshaking, deadline, now)
        try:
            self.selector.register(sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError) as exc:
            log.debug("dropping connection from %s: %s", peer, exc)
            _close(sock)
            return
        self.live[id(conn)] = conn
        self.order.append(conn)

    def ready(self, conn: PendingConnection) -> None:
        """The selector reported `conn` readable (or writable during a handshake)."""
        if conn.closed:
            return
        if conn.handshaking:
            self._handshake(conn)
            if conn.closed or conn.handshaking:
                return
            if not conn.sock.pending():  # type: ignore[attr-defined]
                return  # handshake done; the request has not started yet
        self._release(conn)

    def _handshake(self, conn: PendingConnection) -> None:
        sock = conn.sock
        try:
            sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self.selector.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self.selector.modify(sock, selectors.EVENT_WRITE, conn)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: bad or missing client cert ...
            log.info("TLS handshake with %s failed: %s", conn.peer, exc)
            self._close(conn)
            return
        conn.handshaking = False
        conn.deadline = conn.accepted_at + self.first_request_timeout
        self.selector.modify(sock, selectors.EVENT_READ, conn)

    def _release(self, conn: PendingConnection) -> None:
        """First request bytes are here: a thread serves the connection from now on."""
        self._forget(conn)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            conn.sock.setblocking(True)
        except OSError:
            _close(conn.sock)
            return
        self.hand_off(conn.sock, conn.peer)

    def tick(self) -> None:
        """Close the connections past their deadline."""
        now = self.clock()
        for conn in list(self.live.values()):
            if conn.deadline <= now:
                self.expired += 1
                log.debug("closing idle connection from %s (no request in time)", conn.peer)
                self._close(conn)
        while self.order and self.order[0].closed:
            self.order.popleft()

    def timeout(self) -> float | None:
        """Seconds until the next deadline (for select), None when nothing waits."""
        if not self.live:
            return None
        return max(0.0, min(c.deadline for c in self.live.values()) - self.clock())

    def close_all(self) -> None:
        for conn in list(self.live.values()):
            self._close(conn)
        self.order.clear()

    def _evict_oldest(self) -> None:
        while self.order:
            conn = self.order.popleft()
            if not conn.closed:
                self.evicted += 1
                if self.evicted == 1 or self.evicted % 1000 == 0:
                    log.warning(
                        "%d connections wait for a TLS handshake or a first request: closing the oldest "
                        "(%d closed so far)",
                        len(self.live),
                        self.evicted,
                    )
                self._close(conn)
                return

    def _forget(self, conn: PendingConnection) -> None:
        conn.closed = True
        self.live.pop(id(conn), None)

    def _close(self, conn: PendingConnection) -> None:
        if conn.closed and id(conn) not in self.live:
            return
        self._forget(conn)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        _close(conn.sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
