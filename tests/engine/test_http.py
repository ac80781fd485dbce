"""The HTTP layer in-process with test routes: bodies, streaming, hijack, errors, over unix and TLS."""

import hashlib
import json
import os
import re
import selectors
import socket
import ssl
import tempfile
import threading
import time
from urllib.parse import quote

import pytest

from dockyard.engine.api.admission import HANDSHAKE_TIMEOUT, Admission
from dockyard.engine.api.http import MAX_JSON_BODY, HttpServer, Response
from dockyard.engine.api.router import Router
from dockyard.engine.api.routes import common_headers
from dockyard.engine.errors import Conflict, NotFound, NotModified
from dockyard.engine.listeners import make_server_tls_context
from tests.engine.engine_helper import client_tls_context


def build_test_router(gate):
    router = Router()

    @router.route("POST", "/echo")
    def echo(req):
        body = req.read_body()
        return Response(200, body, "application/octet-stream", [("X-Sha256", hashlib.sha256(body).hexdigest())])

    @router.route("POST", "/json")
    def echo_json(req):
        return {"got": req.json(), "version": req.api_version}

    @router.route("GET", "/stream")
    def stream(req):
        out = req.stream()
        out.write_json({"n": 1})
        # The client opens the gate only after reading message 1: if message 1 were
        # buffered instead of flushed, the wait would time out and report False.
        released = gate.wait(10)
        out.write_json({"n": 2, "released": released})
        out.close()

    @router.route("POST", "/containers/{id}/attach")
    def attach(req):
        conn = req.hijack("application/vnd.docker.raw-stream")
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line == b"quit":
                    conn.sendall(b"bye " + req.params["id"].encode() + b"\n")
                    return
                conn.sendall(line.upper() + b"\n")
        conn.sendall(b"eof\n")  # after the client's half-close we can still write

    @router.route("GET", "/images/{name:.*}/json")
    def image(req):
        return {"name": req.params["name"]}

    @router.route("GET", "/q")
    def q(req):
        return {"all": req.query_bool("all"), "limit": req.query_int("limit"), "filters": req.filters().as_dict()}

    @router.route("GET", "/boom")
    def boom(req):
        raise RuntimeError("kaboom")

    @router.route("POST", "/conflict")
    def conflict(req):
        raise Conflict("name in use")

    @router.route("POST", "/started")
    def started(req):
        raise NotModified("already started")

    @router.route("GET", "/missing")
    def missing(req):
        raise NotFound("No such image: alpine:latest")

    @router.route("DELETE", "/thing")
    def delete(req):
        return None

    return router


class ServerHarness:
    def __init__(self, listen_sock, tls_ctx, **server_options):
        self.gate = threading.Event()
        self.server = HttpServer(build_test_router(self.gate), common_headers(), **server_options)
        self.sock = listen_sock
        self.tls_ctx = tls_ctx
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.server.spawn(conn, peer or "unix", self.tls_ctx)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def server_options():
    """HttpServer keyword arguments for the harness (a test overrides this fixture to change them)."""
    return {}


@pytest.fixture(params=["unix", "tls"])
def harness(request, pki, server_options):
    if request.param == "unix":
        sockdir = tempfile.mkdtemp(prefix="dy-http-", dir="/tmp")
        path = os.path.join(sockdir, "s.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(16)
        h = ServerHarness(lsock, None, **server_options)

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            return s
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        h = ServerHarness(
            lsock, make_server_tls_context(pki.server.ca, pki.server.cert, pki.server.key), **server_options
        )
        ctx = client_tls_context(pki.client)

        def connect():
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            return ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    h.connect = connect
    h.kind = request.param
    yield h
    h.close()
    if request.param == "unix":
        os.unlink(path)
        os.rmdir(sockdir)


class Reader:
    """Minimal HTTP response reader on a raw socket (keeps leftovers for the next response)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(self.buf)
        self.buf += data

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        return lines[0], status, headers

    def exact(self, n):
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def chunk(self):
        size = int(self.line().split(b";")[0], 16)
        data = self.exact(size)
        assert self.exact(2) == b"\r\n"
        return data

    def response(self, method="GET"):
        first, status, headers = self.head()
        if method == "HEAD" or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                part = self.chunk()
                if not part:
                    break
                body += part
            return status, headers, body
        return status, headers, self.exact(int(headers.get("content-length", "0")))


def request(sock, method, path, body=None, headers=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: test"] + ["%s: %s" % h for h in headers]
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))


def test_chunked_request_body_is_decoded(harness):
    payload = bytes(range(256)) * 300  # 76800 bytes across uneven chunks
    pieces = [payload[:1], payload[1:5000], payload[5000:5001], payload[5001:]]
    encoded = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    s = harness.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded)
    r = Reader(s)
    status, headers, body = r.response()
    assert status == 200 and body == payload
    assert headers["x-sha256"] == hashlib.sha256(payload).hexdigest()
    # Same connection, a Content-Length body this time (keep-alive).
    request(s, "POST", "/v1.41/json", b'{"a": [1, 2]}', [("Content-Type", "application/json")])
    status, headers, body = r.response()
    assert status == 200 and json.loads(body) == {"got": {"a": [1, 2]}, "version": "1.41"}
    s.close()


def test_expect_100_continue(harness):
    s = harness.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    r = Reader(s)
    line, status, _ = r.head()
    assert status == 100
    s.sendall(b"hello")
    status, _, body = r.response()
    assert status == 200 and body == b"hello"
    s.close()


def test_streaming_response_is_flushed_per_message(harness):
    s = harness.connect()
    request(s, "GET", "/stream")
    r = Reader(s)
    _, status, headers = r.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "application/json"
    # Message 1 must arrive while the handler is still blocked on the gate.
    assert json.loads(r.chunk()) == {"n": 1}
    harness.gate.set()
    assert json.loads(r.chunk()) == {"n": 2, "released": True}
    assert r.chunk() == b""
    request(s, "DELETE", "/thing")  # the connection is still usable after the stream
    status, headers, body = r.response()
    assert status == 204 and body == b"" and "content-length" not in headers
    s.close()


def test_hijack_upgrade_with_early_bytes(harness):
    s = harness.connect()
    # Stdin bytes glued to the request, as `docker run -i < file` can send them.
    s.sendall(
        b"POST /v1.50/containers/c1/attach?stream=1 HTTP/1.1\r\nHost: t\r\n"
        b"Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nearly\n"
    )
    r = Reader(s)
    first, status, headers = r.head()
    assert first == "HTTP/1.1 101 UPGRADED"
    assert headers == {"content-type": "application/vnd.docker.raw-stream", "connection": "Upgrade", "upgrade": "tcp"}
    assert r.exact(6) == b"EARLY\n"
    s.sendall(b"more data\n")
    assert r.exact(10) == b"MORE DATA\n"
    if harness.kind == "unix":
        s.shutdown(socket.SHUT_WR)  # half-close: the server must still be able to answer
        assert r.exact(4) == b"eof\n"
    else:
        s.sendall(b"quit\n")
        assert r.exact(7) == b"bye c1\n"
    with pytest.raises(EOFError):
        r._more()  # the server closed the hijacked connection when the handler returned
    s.close()


def test_hijack_without_upgrade_header_gets_200(harness):
    s = harness.connect()
    s.sendall(b"POST /containers/c2/attach HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    r = Reader(s)
    first, status, headers = r.head()
    assert first == "HTTP/1.1 200 OK"
    s.sendall(b"x\nquit\n")
    assert r.exact(9) == b"X\nbye c2\n"
    s.close()


@pytest.mark.parametrize(
    "method,path,status,message",
    [
        ("GET", "/boom", 500, "kaboom"),
        ("POST", "/conflict", 409, "name in use"),
        ("GET", "/missing", 404, "No such image: alpine:latest"),
        ("GET", "/nowhere", 404, "page not found"),
        ("GET", "/v1.99/q", 400, "client version 1.99 is too new. Maximum supported API version is 1.50"),
        ("POST", "/json", 400, None),
    ],
)
def test_errors_are_exact_json(harness, method, path, status, message):
    s = harness.connect()
    request(s, method, path, b"{not json" if path == "/json" else None)
    got_status, headers, body = Reader(s).response()
    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert headers["api-version"] == "1.50" and headers["ostype"] == "linux"
    assert headers["docker-experimental"] == "false"
    parsed = json.loads(body)
    assert list(parsed) == ["message"]
    if message is None:
        assert parsed["message"].startswith("invalid JSON")
    else:
        assert parsed["message"] == message
    s.close()


def test_not_modified_has_no_body_and_connection_survives(harness):
    s = harness.connect()
    r = Reader(s)
    request(s, "POST", "/started")
    status, headers, body = r.response()
    assert status == 304 and body == b""
    request(s, "GET", "/images/localhost:5000/team/app:1/json")
    status, _, body = r.response()
    assert status == 200 and json.loads(body) == {"name": "localhost:5000/team/app:1"}
    s.close()


def test_query_helpers_through_the_server(harness):
    s = harness.connect()
    filters = json.dumps({"label": ["a=b"], "status": {"running": True}})
    request(s, "GET", "/q?all=True&limit=5&filters=" + quote(filters))
    status, _, body = Reader(s).response()
    assert status == 200
    assert json.loads(body) == {"all": True, "limit": 5, "filters": {"label": ["a=b"], "status": ["running"]}}
    s.close()


def test_http10_closes_and_head_has_no_body(harness):
    s = harness.connect()
    s.sendall(b"GET /images/x/json HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data
    assert re.search(rb"\r\n\r\n\{\"name\":\"x\"\}\n$", data)
    s.close()


# -- limits (issue 9, item 9) ---------------------------------------------------------------------
def read_until_closed(sock):
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("chunked", [False, True])
def test_json_body_over_the_limit_is_413_and_the_answer_arrives(harness, chunked):
    body = b'{"a": "' + b"x" * (MAX_JSON_BODY + 10) + b'"}'
    s = harness.connect()
    try:
        if chunked:
            s.sendall(b"POST /json HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 65536):
                part = body[i : i + 65536]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            s.sendall(b"0\r\n\r\n")
        else:
            request(s, "POST", "/json", body)
        data = read_until_closed(s)  # the server closes after answering: the rest of the body is not read
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 413 Payload Too Large\r\n"), data[:200]
    assert b"Connection: close" in data
    assert b'"message":"request body too large: the limit is 1048576 bytes"' in data
    # Just under the limit is fine.
    s = harness.connect()
    ok = b'{"a": "' + b"x" * (MAX_JSON_BODY - 100) + b'"}'
    request(s, "POST", "/json", ok)
    status, _, got = Reader(s).response()
    s.close()
    assert status == 200 and len(json.loads(got)["got"]["a"]) == MAX_JSON_BODY - 100


@pytest.mark.parametrize("server_options", [{"header_timeout": 1.0, "idle_timeout": 1.5}])
def test_slow_headers_and_idle_keep_alive_are_cut(harness, server_options):
    # A client trickling its headers a byte at a time is closed at the header deadline ...
    s = harness.connect()
    started = time.monotonic()
    s.sendall(b"GET /q HTTP/1.1\r\n")
    closed = False
    for byte in b"Host: trickle\r\nX-Slow: " + b"a" * 100:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        s.settimeout(0.2)
        try:
            if s.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            pass
        except (ConnectionResetError, ssl.SSLError):
            closed = True
            break
    s.close()
    assert closed and time.monotonic() - started < 4
    # ... and a keep-alive connection left idle after a request is closed at the idle deadline.
    s = harness.connect()
    request(s, "GET", "/q")
    assert Reader(s).response()[0] == 200
    started = time.monotonic()
    s.settimeout(10)
    assert read_until_closed(s) == b""
    assert 1.0 < time.monotonic() - started < 5
    s.close()


def test_connections_beyond_the_cap_or_without_threads_are_refused(monkeypatch):
    server = HttpServer(build_test_router(threading.Event()), common_headers(), max_connections=1)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        assert server.spawn(a, "first") is not None  # holds the one slot while it waits for a request
        assert server.spawn(c, "second") is None  # refused: closed, not queued
        assert d.recv(1) == b""
        b.sendall(b"GET /q HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_until_closed(b).startswith(b"HTTP/1.1 200 OK")
        deadline = time.monotonic() + 5
        while server.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.active == 0

        def no_threads(self):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", no_threads)
        e, f = socket.socketpair()
        assert server.spawn(e, "third") is None  # no exception for the accept loop: refused
        assert f.recv(1) == b"" and server.active == 0 and server.refused == 2
        f.close()
    finally:
        for sock in (a, b, c, d):
            sock.close()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_admission_caps_waiting_connections_and_enforces_deadlines(pki):
    sel = selectors.DefaultSelector()
    handed = []
    clock = FakeClock()
    adm = Admission(sel, lambda sock, peer: handed.append((sock, peer)) or True, max_pending=3, clock=clock)
    adm.handshake_timeout, adm.first_request_timeout = 5.0, 20.0
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        for i, (server_side, _) in enumerate(pairs):
            clock.now += 1
            adm.admit(server_side, "c%d" % i, None)
        assert len(adm) == 3 and adm.evicted == 2
        assert pairs[0][1].recv(1) == b"" and pairs[1][1].recv(1) == b""  # the two oldest were closed
        pairs[3][1].sendall(b"GET /_ping HTTP/1.1\r\n")  # c3 starts a request: handed to a thread
        for key, _ in sel.select(1):
            adm.ready(key.data)
        assert [peer for _, peer in handed] == ["c3"] and handed[0][0].getblocking()
        clock.now += 25  # past the first-request deadline of the others
        adm.tick()
        assert len(adm) == 0 and adm.expired == 2
        assert pairs[2][1].recv(1) == b"" and pairs[4][1].recv(1) == b""
        assert adm.timeout() is None
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        for sock, _ in handed:
            sock.close()
        sel.close()


def test_admission_runs_tls_handshakes_without_threads(pki):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    port = lsock.getsockname()[1]
    server_ctx = make_server_tls_context(pki.server.ca, pki.server.cert, pki.server.key)
    sel = selectors.DefaultSelector()
    handed = []
    clock = FakeClock()
    adm = Admission(sel, lambda sock, peer: handed.append(sock) or True, clock=clock)
    result = {}

    def client():
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        tls = client_tls_context(pki.client).wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: t\r\n\r\n")
        result["tls"] = tls

    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)  # connects, never says hello
    thread = threading.Thread(target=client)
    thread.start()
    try:
        for _ in range(2):
            conn, peer = lsock.accept()
            adm.admit(conn, peer, server_ctx)
        deadline = time.monotonic() + 10
        while not handed and time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                adm.ready(key.data)
        thread.join(10)
        assert len(handed) == 1 and isinstance(handed[0], ssl.SSLSocket)
        assert handed[0].recv(100).startswith(b"GET /_ping")  # the request, decrypted, for the thread
        assert len(adm) == 1  # the stalled one still waits for its handshake ...
        clock.now += HANDSHAKE_TIMEOUT + 1
        adm.tick()  # ... until the handshake deadline
        assert len(adm) == 0 and stalled.recv(1) == b""
    finally:
        stalled.close()
        for sock in handed:
            sock.close()
        if "tls" in result:
            result["tls"].close()
        lsock.close()
        sel.close()
