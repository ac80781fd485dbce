"""The embedded DNS resolver: 127.0.0.11:53 (UDP and TCP) inside each container on a user-defined network,
as Docker's. Container names, short IDs, network aliases and compose service names of the containers that
share a user-defined network with the asker resolve to their addresses there; other names are forwarded
to the host's resolvers (or --dns) from the engine's network namespace, unless every network of the
container is --internal.

The sockets are opened by a thread that joined the container's network namespace (netns.run_in_netns) and
stay there; one engine thread serves them all with a selector. Forwarded queries and TCP connections run
on short-lived worker threads, at most MAX_WORKERS at once and PER_CONTAINER for one container (beyond that:
SERVFAIL / connection closed), so a container flooding its resolver cannot starve the others or the engine.

Every packet is hostile: questions are parsed strictly (one question, no compression, bounded lengths);
a malformed query gets FORMERR or nothing, never an exception in the serving thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from dockyard.engine.network.netns import run_in_netns

log = logging.getLogger("dockyard.engine")

ADDRESS = "127.0.0.11"
PORT = 53
MAX_UDP = 4096
MAX_TCP = 65535
MAX_WORKERS = 32
PER_CONTAINER = 4
TCP_QUERIES = 16  # per connection: a slow client cannot hold a worker for long
UPSTREAM_TIMEOUT = 2.0
TCP_TIMEOUT = 5.0
TTL = 600
TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

# lookup(container id, name) -> (addresses, known): addresses of `name` as the container sees it;
# known is True when the name is a container's on a shared network (answered here, never forwarded).
Lookup = Callable[[str, str], Tuple[List[str], bool]]
# upstreams(container id) -> the nameservers to forward to ([] = no forwarding: internal networks only).
Upstreams = Callable[[str], List[str]]


class Question:
    __slots__ = ("name", "qtype", "qclass", "end")

    def __init__(self, name: str, qtype: int, qclass: int, end: int) -> None:
        self.name, self.qtype, self.qclass, self.end = name, qtype, qclass, end


def parse_query(data: bytes) -> Optional[Question]:
    """The one question of a standard query, or None when `data` is not one this resolver answers."""
    if len(data) < 12 or len(data) > MAX_TCP:
        return None
    _, flags, qdcount = struct.unpack("!HHH", data[:6])
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qdcount != 1:
        return None
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            return None
        length = data[pos]
        pos += 1
        if length == 0:
            break
        if length > 63 or pos + length > len(data):  # compression pointers have no place in a question
            return None
        labels.append(data[pos : pos + length])
        pos += length
        if sum(len(x) + 1 for x in labels) > 255:
            return None
    if pos + 4 > len(data):
        return None
    qtype, qclass = struct.unpack("!HH", data[pos : pos + 4])
    try:
        name = ".".join(label.decode("ascii") for label in labels).lower()
    except UnicodeDecodeError:
        return None
    return Question(name, qtype, qclass, pos + 4)


def response(query: bytes, question: Optional[Question], rcode: int, addresses: Sequence[str] = ()) -> bytes:
    """An answer to `query` (>= 12 bytes): its ID, RD bit and question, RA set; A records for the IPv4
    `addresses` of an A question, AAAA records for the IPv6 ones of an AAAA question (none of that
    family: an empty answer, NODATA)."""
    qid, flags = struct.unpack("!HH", query[:4])
    out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    if question is None:
        return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)
    version = {TYPE_A: 4, TYPE_AAAA: 6}.get(question.qtype)
    parsed = [ipaddress.ip_address(a) for a in addresses]
    answers = [a.packed for a in parsed if a.version == version]
    if rcode == NOERROR:
        out_flags |= 0x0400  # AA: the containers' names are ours
    else:
        answers = []
    body = query[12 : question.end]
    for packed in answers:
        body += struct.pack("!HHHIH", 0xC00C, question.qtype, CLASS_IN, TTL, len(packed)) + packed
    return struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), 0, 0) + body


class EmbeddedDns:
    """127.0.0.11:53 in containers' network namespaces, served by one engine thread."""

    def __init__(self, lookup: Lookup, upstreams: Upstreams) -> None:
        self.lookup = lookup
        self.upstreams = upstreams
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sockets: Dict[str, List[socket.socket]] = {}
        self._workers = threading.BoundedSemaphore(MAX_WORKERS)
        self._busy: Dict[str, int] = {}  # container id -> worker slots it holds
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: Optional[threading.Thread] = None

    def serving(self, cid: str) -> bool:
        with self._lock:
            return cid in self._sockets

    def add(self, cid: str, netns: str) -> None:
        """Open 127.0.0.11:53 (UDP and TCP) in the network namespace at `netns` for container `cid`."""
        with self._lock:
            if cid in self._sockets:
                return
        socks = run_in_netns(netns, _open_sockets)
        with self._lock:
            if cid in self._sockets:  # raced with another add
                for sock in socks:
                    sock.close()
                return
            self._sockets[cid] = socks
            for sock in socks:
                self._sel.register(sock, selectors.EVENT_READ, (cid, sock))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="embedded-dns", daemon=True)
                self._thread.start()
        self._wake()

    def remove(self, cid: str) -> None:
        with self._lock:
            socks = self._sockets.pop(cid, [])
            for sock in socks:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
        for sock in socks:
            sock.close()
        self._wake()

    def close(self) -> None:
        for cid in list(self._sockets):
            self.remove(cid)

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _serve(self):
        while True:
            try:
                events = self._sel.select()
            except (OSError, ValueError):
                continue
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except OSError:
                        pass
                    continue
                cid, sock = key.data
                try:
                    if sock.type == socket.SOCK_DGRAM:
                        self._udp(cid, sock)
                    else:
                        self._accept(cid, sock)
                except Exception as exc:  # one container's bad packet never stops the resolver
                    log.debug("embedded DNS for %s: %s", cid[:12], exc)

    def _udp(self, cid, sock):
        try:
            data, peer = sock.recvfrom(MAX_UDP)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        reply = self._answer(cid, data)
        if reply:
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass
        elif reply is None:
            self._spawn(self._forward_udp, cid, sock, data, peer, fail=lambda: _send_quietly(sock, data, peer))

    def _accept(self, cid, listener):
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        if not self._take(cid):
            conn.close()
            return
        threading.Thread(target=self._tcp, args=(cid, conn), name="embedded-dns-tcp", daemon=True).start()

    def _take(self, cid):
        """A worker slot for `cid`: at most MAX_WORKERS in all and PER_CONTAINER for one container,
        so a container flooding its resolver only slows its own lookups."""
        with self._lock:
            if self._busy.get(cid, 0) >= PER_CONTAINER or not self._workers.acquire(blocking=False):
                return False
            self._busy[cid] = self._busy.get(cid, 0) + 1
            return True

    def _give(self, cid):
        with self._lock:
            left = self._busy.get(cid, 1) - 1
            if left > 0:
                self._busy[cid] = left
            else:
                self._busy.pop(cid, None)
            self._workers.release()

    def _spawn(self, func, cid, *args, fail):
        if not self._take(cid):
            fail()
            return

        def run():
            try:
                func(cid, *args)
            finally:
                self._give(cid)

        threading.Thread(target=run, name="embedded-dns-forward", daemon=True).start()

    def _answer(self, cid: str, data: bytes) -> Optional[bytes]:
        """The reply for a name of ours (or a malformed query); None = forward it."""
        if len(data) < 12:
            return b""  # not even a header: dropped
        question = parse_query(data)
        if question is None:
            return response(data, None, FORMERR)
        if question.qclass != CLASS_IN:
            return None
        addresses, known = self.lookup(cid, question.name)
        if known:
            return response(data, question, NOERROR, addresses)
        return None

    def _forward(self, cid: str, data: bytes, tcp: bool) -> Optional[bytes]:
        servers = self.upstreams(cid)
        for server in servers:
            try:
                if tcp:
                    return _ask_tcp(server, data)
                return _ask_udp(server, data)
            except (OSError, ValueError):
                continue
        return None

    def _forward_udp(self, cid, sock, data, peer):
        reply = self._forward(cid, data, tcp=False)
        if reply is None:
            reply = response(data, parse_query(data), SERVFAIL if self.upstreams(cid) else REFUSED)
        try:
            sock.sendto(reply, peer)
        except OSError:
            pass

    def _tcp(self, cid, conn):
        try:
            conn.settimeout(TCP_TIMEOUT)
            for _ in range(TCP_QUERIES):
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                data = _recv_exact(conn, struct.unpack("!H", head)[0])
                if data is None or len(data) < 12:
                    return
                reply = self._answer(cid, data)
                if reply is None:
                    reply = self._forward(cid, data, tcp=True) or response(
                        data, parse_query(data), SERVFAIL if self.upstreams(cid) else REFUSED
                    )
                if not reply:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            self._give(cid)


def _send_quietly(sock, data, peer):
    try:
        sock.sendto(response(data, parse_query(data), SERVFAIL), peer)
    except OSError:
        pass


def _open_sockets() -> List[socket.socket]:
    """UDP and TCP sockets on 127.0.0.11:53 of the calling thread's network namespace."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; UDP binds exclusively
        for sock in (udp, tcp):
            sock.bind((ADDRESS, PORT))
            sock.setblocking(False)
        tcp.listen(16)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return [udp, tcp]


def _ask_udp(server: str, data: bytes) -> Optional[bytes]:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(UPSTREAM_TIMEOUT)
        sock.connect((server, PORT))
        sock.send(data)
        while True:
            reply = sock.recv(MAX_UDP)
            if len(reply) >= 12 and reply[:2] == data[:2]:
                return reply


def _ask_tcp(server: str, data: bytes) -> Optional[bytes]:
    with socket.create_connection((server, PORT), timeout=UPSTREAM_TIMEOUT) as sock:
        sock.sendall(struct.pack("!H", len(data)) + data)
        head = _recv_exact(sock, 2)
        if head is None:
            return None
        reply = _recv_exact(sock, struct.unpack("!H", head)[0])
        return reply if reply and reply[:2] == data[:2] else None


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
