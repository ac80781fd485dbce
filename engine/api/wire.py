"""HTTP/1.1 framing on a socket: buffered reads, header maps and request-body decoding."""

import socket
import time

MAX_LINE = 64 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_HEADERS = 200
DRAIN_LIMIT = 16 * 1024 * 1024  # unread body left after a handler: drain this much to keep the connection


class ProtocolError(Exception):
    """The client sent something that is not HTTP/1.x; answer 400 and close."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class SocketReader:
    """Buffered reads from a (TLS) socket whose leftover bytes can be handed to a hijacker."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.deadline = None  # time.monotonic() by which reads must be done; None: the socket's timeout

    def _fill(self):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("deadline passed")
            self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self, limit=MAX_LINE):
        """One line including CRLF; b'' on clean EOF; ProtocolError past `limit`."""
        start = 0
        while True:
            idx = self.buf.find(b"\n", start)
            if idx >= 0:
                line = bytes(self.buf[: idx + 1])
                del self.buf[: idx + 1]
                return line
            if len(self.buf) > limit:
                raise ProtocolError("line too long", 431)
            start = len(self.buf)
            if not self._fill():
                if self.buf:
                    raise ProtocolError("connection closed mid-line")
                return b""

    def read(self, n):
        """Up to n bytes (at least 1 unless EOF)."""
        if not self.buf:
            if not self._fill():
                return b""
        chunk = bytes(self.buf[:n])
        del self.buf[:n]
        return chunk

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ProtocolError("connection closed mid-body")
        chunk = bytes(self.buf[:n])
        del self.buf[:n]
        return chunk

    def take_buffer(self):
        data = bytes(self.buf)
        self.buf.clear()
        return data


class Headers:
    """Case-insensitive header map keeping every value."""

    def __init__(self, pairs=()):
        self._items = []
        for name, value in pairs:
            self.add(name, value)

    def add(self, name, value):
        self._items.append((name, value))

    def get(self, name, default=None):
        lname = name.lower()
        values = [v for n, v in self._items if n.lower() == lname]
        if not values:
            return default
        return ", ".join(values)

    def get_all(self, name):
        lname = name.lower()
        return [v for n, v in self._items if n.lower() == lname]

    def __contains__(self, name):
        return self.get(name) is not None

    def items(self):
        return list(self._items)

    def tokens(self, name):
        """Comma-separated header as lower-case tokens (Connection, Transfer-Encoding...)."""
        out = []
        for value in self.get_all(name):
            out.extend(t.strip().lower() for t in value.split(",") if t.strip())
        return out


class _Body:
    """Base for request-body readers: sends '100 Continue' before the first read if asked."""

    def __init__(self, conn, request):
        self._conn = conn
        self._request = request
        self.done = False

    def _before_read(self):
        req = self._request
        if req.expect_continue and not req.continue_sent and not req.started:
            req.continue_sent = True
            self._conn.send_raw(b"HTTP/1.1 100 Continue\r\n\r\n")

    def read(self, size=-1):
        """Read up to `size` decoded bytes (all remaining if size < 0); b'' at the end."""
        if self.done:
            return b""
        self._before_read()
        if size is None or size < 0:
            parts = []
            while True:
                part = self._read_some(1 << 20)
                if not part:
                    break
                parts.append(part)
            return b"".join(parts)
        return self._read_some(size)

    def __iter__(self):
        while True:
            part = self.read(65536)
            if not part:
                return
            yield part

    def drain(self, limit=DRAIN_LIMIT):
        """Discard what the handler left unread. False if too much (the connection is closed instead)."""
        total = 0
        while not self.done:
            if self._request.expect_continue and not self._request.continue_sent:
                # The client is waiting for permission: it never sent the body.
                return False
            part = self._read_some(65536)
            if not part:
                break
            total += len(part)
            if total > limit:
                return False
        return True


class EmptyBody(_Body):
    def __init__(self, conn, request):
        super().__init__(conn, request)
        self.done = True

    def _read_some(self, size):
        return b""


class LengthBody(_Body):
    def __init__(self, conn, request, length):
        super().__init__(conn, request)
        self.remaining = length
        self.done = length == 0

    def _read_some(self, size):
        if self.remaining <= 0:
            self.done = True
            return b""
        data = self._conn.reader.read(min(size, self.remaining))
        if not data:
            raise ProtocolError("connection closed mid-body")
        self.remaining -= len(data)
        if self.remaining == 0:
            self.done = True
        return data


class ChunkedBody(_Body):
    """Decodes Transfer-Encoding: chunked (docker load/build/cp send bodies this way)."""

    def __init__(self, conn, request):
        super().__init__(conn, request)
        self.chunk_left = 0

    def _read_some(self, size):
        reader = self._conn.reader
        if self.chunk_left == 0:
            line = reader.readline(MAX_LINE)
            if not line:
                raise ProtocolError("connection closed mid-body")
            size_text = line.split(b";", 1)[0].strip()
            try:
                self.chunk_left = int(size_text, 16)
            except ValueError:
                raise ProtocolError("bad chunk size %r" % size_text[:20]) from None
            if self.chunk_left < 0:
                raise ProtocolError("bad chunk size")
            if self.chunk_left == 0:
                # Trailers (ignored) end with an empty line.
                while True:
                    trailer = reader.readline(MAX_LINE)
                    if trailer in (b"\r\n", b"\n"):
                        break
                    if not trailer:
                        raise ProtocolError("connection closed in trailers")
                self.done = True
                return b""
        data = reader.read(min(size, self.chunk_left))
        if not data:
            raise ProtocolError("connection closed mid-chunk")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            if reader.readline(MAX_LINE) not in (b"\r\n", b"\n"):
                raise ProtocolError("missing CRLF after chunk")
        return data
