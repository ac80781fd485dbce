"""HTTP/1.1 server on raw sockets: requests, keep-alive, dispatch to the router, errors.

One thread per connection (the TLS handshake runs there too, so a slow client
never blocks the accept loop). The `app` callable (the Router) maps a Request to
a result; this module turns results and EngineErrors (status from api.errors) into bytes on the wire.
Framing lives in wire.py, response objects in responses.py.
"""

import json
import logging
import socket
import ssl
import threading
import time
from urllib.parse import parse_qs, unquote

from dockyard.engine.api import query as querymod
from dockyard.engine.api import schema as schemamod
from dockyard.engine.api.errors import ApiError, http_status
from dockyard.engine.api.responses import (  # noqa: F401  (re-exported for handlers)
    NO_BODY_STATUS,
    ChunkedStream,
    HijackedConnection,
    Response,
    error_response,
    json_bytes,
    json_response,
)
from dockyard.engine.api.wire import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    ChunkedBody,
    EmptyBody,
    Headers,
    LengthBody,
    ProtocolError,
    SocketReader,
)
from dockyard.engine.errors import EngineError, InvalidParameter, Unsupported

log = logging.getLogger("dockyard.engine.http")

HEADER_TIMEOUT = 30.0  # from a request's first line to the end of its headers (slowloris)
IDLE_TIMEOUT = 120.0  # keep-alive: the next request must start within this (Go clients drop idle ones at 90 s)
HANDSHAKE_TIMEOUT = 10.0  # TLS handshakes on spawn()ed sockets (the daemon's go through api/admission.py)
LINGER_SECONDS = 2.0  # after a 413: how long, and how much, of the unread body we read and drop
LINGER_BYTES = 8 << 20
MAX_CONNECTIONS = 1024  # connections with a thread; beyond, new ones are refused (closed) instead
MAX_JSON_BODY = 1 << 20  # JSON request bodies (create is ~2 KB); archives are streamed, not read whole

REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(when=None):
    """RFC 7231 date, 'Sun, 06 Nov 1994 08:49:37 GMT', as email.utils.formatdate(usegmt=True) writes it
    (not with it: the email package costs an idle daemon a megabyte); English names whatever the locale."""
    t = time.gmtime(when)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


class Request:
    """One parsed request. Handlers read the body, then return a result or stream/hijack."""

    def __init__(self, conn, method, target, http_version, headers):
        self.conn = conn
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        raw_path, _, raw_query = target.partition("?")
        self.raw_path = raw_path
        self.path = unquote(raw_path)
        self.query = parse_qs(raw_query, keep_blank_values=True)
        self.engine = conn.server.context
        self.peer = conn.peer
        self.params = {}
        self.api_version = None
        self.route = None
        self.started = False  # status line sent
        self.hijacked = None
        self.stream_obj = None
        self.must_close = False
        self.continue_sent = False
        self.expect_continue = headers.get("Expect", "").lower() == "100-continue"
        conn_tokens = headers.tokens("Connection")
        if http_version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in conn_tokens
        else:
            self.keep_alive = "close" not in conn_tokens
        self.body = self._make_body()

    def _make_body(self):
        te = self.headers.tokens("Transfer-Encoding")
        if te:
            if te != ["chunked"]:
                self.must_close = True
                raise Unsupported("unsupported Transfer-Encoding: %s" % ", ".join(te))
            return ChunkedBody(self.conn, self)
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                n = int(length.split(",")[0].strip())
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
            if n < 0:
                raise ProtocolError("bad Content-Length")
            return LengthBody(self.conn, self, n)
        return EmptyBody(self.conn, self)

    # -- reading ------------------------------------------------------------
    def read_body(self, limit=None):
        """The whole decoded body; 413 beyond `limit` bytes. Read it before hijack()."""
        if limit is None:
            return self.body.read()
        too_large = ApiError("request body too large: the limit is %d bytes" % limit, 413)
        if isinstance(self.body, LengthBody) and self.body.remaining > limit:
            self.must_close = True  # never read it: the connection goes
            raise too_large
        parts, total = [], 0
        for part in self.body:
            total += len(part)
            if total > limit:
                self.must_close = True
                raise too_large
            parts.append(part)
        return b"".join(parts)

    def json(self, default=None, schema=None):
        """The body parsed as JSON (at most MAX_JSON_BODY bytes: 413); `default` when empty; 400 when malformed.

        With `schema` (engine/api/schema.py) a body of the wrong shape or types is a 400 too.
        """
        data = self.read_body(MAX_JSON_BODY)
        if not data.strip():
            return default
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidParameter("invalid JSON: %s" % exc) from None
        except RecursionError:
            raise InvalidParameter("invalid JSON: nested too deeply") from None
        if schema is not None and value is not None:
            schemamod.check(schema, value)
        return value

    def query_value(self, name, default=None):
        return querymod.first(self.query, name, default)

    def query_bool(self, name, default=False):
        return querymod.boolean(self.query, name, default)

    def query_int(self, name, default=None):
        return querymod.integer(self.query, name, default)

    def query_uint(self, name, maximum):
        return querymod.unsigned(self.query, name, maximum)

    def filters(self, name="filters"):
        return querymod.Filters.from_query(self.query, name)

    # -- writing ------------------------------------------------------------
    def send(self, response):
        """Send a complete response now (handlers normally just return it)."""
        self.conn.send_response(self, response)

    def stream(self, status=200, content_type="application/json", headers=None):
        """Send headers now (flushed) and return a ChunkedStream for the body.

        Use for /wait (the client blocks until headers arrive), logs, pull, events.
        """
        extra = [("Content-Type", content_type)] if content_type else []
        extra += list(headers or [])
        if self.method != "HEAD":
            extra.append(("Transfer-Encoding", "chunked"))
        self.conn.send_head(self, status, extra)
        self.stream_obj = ChunkedStream(self.conn, self)
        return self.stream_obj

    def hijack(self, content_type="application/vnd.docker.raw-stream"):
        """Take over the connection for a raw duplex stream (attach, exec start).

        With `Connection: Upgrade` / `Upgrade: tcp` the answer is exactly
        'HTTP/1.1 101 UPGRADED'; older clients get '200 OK' and the raw stream.
        The header block is sent on its own (docker-py loses data glued to it).
        """
        if self.started:
            raise RuntimeError("response already started")
        upgrade = "upgrade" in self.headers.tokens("Connection") or "Upgrade" in self.headers
        if upgrade:
            head = (
                "HTTP/1.1 101 UPGRADED\r\nContent-Type: %s\r\nConnection: Upgrade\r\n"
                "Upgrade: tcp\r\n\r\n" % content_type
            )
        else:
            head = "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n\r\n" % content_type
        self.started = True
        self.conn.send_raw(head.encode("latin-1"))
        sock = self.conn.sock
        sock.settimeout(None)
        self.hijacked = HijackedConnection(sock, self.conn.reader.take_buffer())
        return self.hijacked


class Connection:
    """Serves HTTP requests on one accepted socket until close, error or hijack."""

    def __init__(self, server, sock, peer):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.reader = SocketReader(sock)
        self._send_lock = threading.Lock()
        self.detached = False  # a handler kept the hijacked socket: do not close it

    def send_raw(self, data):
        with self._send_lock:
            self.sock.sendall(data)

    def _head_bytes(self, req, status, extra_headers, keep_alive):
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        for name, value in self.server.base_headers:
            lines.append("%s: %s" % (name, value))
        lines.append("Date: %s" % http_date())
        for name, value in extra_headers:
            lines.append("%s: %s" % (name, value))
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_head(self, req, status, extra_headers):
        if req.started:
            raise RuntimeError("response already started")
        req.started = True
        if req.expect_continue and not req.continue_sent:
            # We answered without reading the body; it will never come on this connection.
            req.must_close = True
        keep = req.keep_alive and not req.must_close
        self.send_raw(self._head_bytes(req, status, extra_headers, keep))

    def send_response(self, req, resp):
        headers = []
        if resp.content_type:
            headers.append(("Content-Type", resp.content_type))
        headers.extend(resp.headers)
        names = {n.lower() for n, _ in headers}
        body = resp.body
        if resp.status in NO_BODY_STATUS or 100 <= resp.status < 200:
            body = b""
        elif "content-length" not in names:
            headers.append(("Content-Length", str(len(body))))
        self.send_head(req, resp.status, headers)
        if body and req.method != "HEAD":
            self.send_raw(body)

    def _read_request(self):
        # Deadlines, not per-read timeouts: a client trickling a byte at a time cannot hold the thread.
        self.reader.deadline = time.monotonic() + self.server.idle_timeout
        line = self.reader.readline()
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests (RFC 7230 3.5)
            line = self.reader.readline()
        if not line:
            return None
        self.reader.deadline = time.monotonic() + self.server.header_timeout
        try:
            method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ")
        except ValueError:
            raise ProtocolError("malformed request line") from None
        if not version.startswith("HTTP/1.") or not method.isalpha() or not target.startswith("/"):
            raise ProtocolError("malformed request line")
        headers, total = Headers(), 0
        while True:
            hline = self.reader.readline()
            if not hline:
                raise ProtocolError("connection closed in headers")
            if hline in (b"\r\n", b"\n"):
                break
            total += len(hline)
            if total > MAX_HEADER_BYTES or len(headers.items()) >= MAX_HEADERS:
                raise ProtocolError("request headers too large", 431)
            name, sep, value = hline.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError("malformed header line")
            headers.add(name, value.strip())
        # Handlers may block for long (wait, attach): no timeout once the request is in.
        self.reader.deadline = None
        self.sock.settimeout(None)
        return Request(self, method.upper(), target, version, headers)

    def _error_on_new_request(self, exc):
        """Answer a request we could not even build (bad headers/body framing) and close."""
        if isinstance(exc, EngineError):
            status, message = http_status(exc), exc.message
        else:
            status, message = exc.status, str(exc)
        resp = error_response(status, message)
        body = resp.body
        head = "HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Status"))
        for name, value in self.server.base_headers:
            head += "%s: %s\r\n" % (name, value)
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        head += "Connection: close\r\n\r\n"
        try:
            self.send_raw(head.encode("latin-1") + body)
        except OSError:
            pass

    def serve(self):
        while True:
            try:
                req = self._read_request()
            except (ProtocolError, EngineError) as exc:
                self._error_on_new_request(exc)
                return
            except (OSError, ssl.SSLError):
                return  # timeout, reset, TLS alert: nothing to answer
            if req is None:
                return
            self._handle(req)
            if req.hijacked is None and req.must_close and not req.body.done:
                self._linger()
            if req.hijacked is not None or req.must_close or not req.keep_alive:
                return
            try:
                if not req.body.drain():
                    return
            except (ProtocolError, OSError):
                return

    def _linger(self):
        """Answered without reading the body (413): read and drop some of it before closing.

        Closing with unread bytes makes the kernel send a reset, which can destroy our answer in the
        client's receive buffer before the client reads it; a bounded lingering read avoids that.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            dropped = 0
            while dropped < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
                if not data:
                    return
                dropped += len(data)
        except (OSError, ValueError):
            return

    def _handle(self, req):
        try:
            result = self.server.app(req)
            self._finish(req, result)
        except EngineError as exc:
            self._fail(req, http_status(exc), exc.message, None)
        except ProtocolError as exc:
            req.must_close = True
            self._fail(req, exc.status, str(exc), None)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError) as exc:
            log.debug("client %s went away during %s %s: %s", self.peer, req.method, req.path, exc)
            req.must_close = True
        except Exception as exc:  # a handler bug: answer 500, keep serving others
            log.exception("handler error on %s %s", req.method, req.path)
            self._fail(req, 500, str(exc) or exc.__class__.__name__, exc)
        finally:
            if req.hijacked is not None:
                if req.hijacked.detached:
                    self.detached = True
                else:
                    req.hijacked.close()

    def _finish(self, req, result):
        if req.hijacked is not None:
            return
        if req.stream_obj is not None:
            if not req.stream_obj.closed and not req.must_close:
                req.stream_obj.close()
            return
        if req.started:
            return
        if result is None:
            resp = Response(204)
        elif isinstance(result, Response):
            resp = result
        elif isinstance(result, (dict, list)):
            resp = json_response(result)
        else:
            raise TypeError("handler returned %r" % type(result).__name__)
        self.send_response(req, resp)

    def _fail(self, req, status, message, exc):
        if req.hijacked is not None:
            return
        if req.started:
            # Too late for a status code: cut the connection so the client sees the failure.
            req.must_close = True
            return
        try:
            self.send_response(req, error_response(status, message))
        except OSError:
            req.must_close = True


class HttpServer:
    """Owns the app callable and the headers every response carries; serves accepted sockets."""

    def __init__(
        self,
        app,
        base_headers=(),
        context=None,
        header_timeout=HEADER_TIMEOUT,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        idle_timeout=IDLE_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
    ):
        self.app = app
        self.base_headers = list(base_headers)
        self.context = context
        self.header_timeout = header_timeout
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._count_lock = threading.Lock()
        self.active = 0  # connections with a thread
        self.refused = 0

    def spawn(self, sock, peer, tls_context=None):
        """Serve `sock` on a new daemon thread (TLS handshake included); None when it was refused."""
        with self._count_lock:
            if self.active >= self.max_connections:
                return self._refuse(sock, peer, "%d connections are being served" % self.active)
            self.active += 1
        thread = threading.Thread(
            target=self.handle_connection,
            args=(sock, peer, tls_context),
            name="conn-%s" % (peer,),
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            with self._count_lock:
                self.active -= 1
                return self._refuse(sock, peer, str(exc))
        return thread

    def serve_ready(self, sock, peer):
        """A connection past its TLS handshake whose first request is arriving (api/admission.py)."""
        return self.spawn(sock, peer, None) is not None

    def _refuse(self, sock, peer, why):
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("refusing connection from %s: %s (%d refused so far)", peer, why, self.refused)
        try:
            sock.close()
        except OSError:
            pass
        return None

    def handle_connection(self, sock, peer, tls_context=None):
        try:
            self._serve_connection(sock, peer, tls_context)
        finally:
            with self._count_lock:
                self.active -= 1

    def _serve_connection(self, sock, peer, tls_context):
        conn = None
        try:
            if tls_context is not None:
                sock.settimeout(self.handshake_timeout)
                try:
                    sock = tls_context.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.info("TLS handshake with %s failed: %s", peer, exc)
                    return
            conn = Connection(self, sock, peer)
            conn.serve()
        except Exception:
            log.exception("connection %s crashed", peer)
        finally:
            if conn is None or not conn.detached:
                try:
                    sock.close()
                except OSError:
                    pass
