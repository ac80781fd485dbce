"""Test helpers for the provider tests at libcloud's HTTP layer: a local HTTP server on 127.0.0.1 that
records every request and answers from a small handwritten model of the provider's API (responses shaped
as the provider documents them), an SSH banner listener standing in for the node, and driver options."""

import ipaddress
import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method, self.path, self.query, self.headers, self.raw = method, path, query, headers, body

    @property
    def json(self):
        return json.loads(self.raw) if self.raw else None

    def __repr__(self):
        return f"{self.method} {self.path}"


class FakeAPI:
    """Serves model.handle(request) -> (status, body dict or None, headers) and keeps the requests."""

    def __init__(self, model):
        self.model = model
        self.requests = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                              {k.lower(): v for k, v in self.headers.items()}, body.decode())
                with api.lock:
                    api.requests.append(req)
                    try:
                        status, data, headers = api.model.handle(req)
                    except Exception as e:  # a bug in the model shows up as a 500 with the reason
                        status, data, headers = 500, {"message": f"fake API error: {e!r}"}, {}
                payload = b"" if data is None else (data if isinstance(data, bytes) else json.dumps(data).encode())
                self.send_response(status)
                self.send_header("Content-Type", (headers or {}).get("Content-Type", "application/json"))
                for k, v in (headers or {}).items():
                    if k != "Content-Type":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def calls(self, method=None, prefix="", path=None):
        return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(prefix)
                and (path is None or r.path == path)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SSHBanner:
    """Stands in for a node's sshd: answers every connection with an SSH banner."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6 test\r\n")

    def close(self):
        self.closed = True
        self.sock.close()


def loopback_only(monkeypatch):
    """Fail any name lookup or connection to an address outside 127.0.0.0/8 in this process."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def allowed(host):
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host is not None and not allowed(host):
            raise OSError(f"test guard: refusing to resolve {host!r} (only loopback is allowed)")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address[0]):
            raise OSError(f"test guard: refusing to connect to {address[0]!r} (only loopback is allowed)")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


def options_for(cls, **values):
    """The options dict the CLI would pass: every flag at its default, then values (by Flag.key)."""
    opts = {}
    for f in cls.flags:
        opts[f.key] = () if f.multiple else (bool(f.default) if f.is_flag else f.default)
    for k, v in values.items():
        key = k.replace("-", "_")
        if key not in opts:
            raise KeyError(f"{cls.__name__} has no flag {k}")
        opts[key] = v
    return opts


def make_driver(cls, machine_dir, **values):
    d = cls("m1", str(machine_dir), {})
    d.set_config_from_flags(options_for(cls, **values))
    d.poll_interval = 0.05  # the fakes change state at once
    return d
