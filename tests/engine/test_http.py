"""The HTTP layer in-process with test routes: bodies, streaming, hijack, errors, over unix and TLS."""

import hashlib
import json
import os
import re
import socket
import tempfile
import threading
from urllib.parse import quote

import pytest

from dockyard.engine.api.http import HttpServer, Response
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
    def __init__(self, listen_sock, tls_ctx):
        self.gate = threading.Event()
        self.server = HttpServer(build_test_router(self.gate), common_headers())
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


@pytest.fixture(params=["unix", "tls"])
def harness(request, pki):
    if request.param == "unix":
        sockdir = tempfile.mkdtemp(prefix="dy-http-", dir="/tmp")
        path = os.path.join(sockdir, "s.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(16)
        h = ServerHarness(lsock, None)

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
        h = ServerHarness(lsock, make_server_tls_context(pki.server.ca, pki.server.cert, pki.server.key))
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
