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

    def __init__(self, model, host="127.0.0.1", port=0, ssl_context=None):
        self.model = model
        self.requests = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(
                    self.command,
                    url.path,
                    dict(urllib.parse.parse_qsl(url.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body.decode(),
                )
                gate = getattr(api.model, "before_handle", None)
                if gate is not None:  # may block (a test holding requests), so outside the lock
                    gate(req)
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

        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"fake APIs listen on loopback only, not {host}")
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.host, self.port = host, self.server.server_address[1]
        if ssl_context is not None:  # TLS: the handshake happens on accept
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        # A short poll interval: close() returns at once instead of after half a second.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def calls(self, method=None, prefix="", path=None):
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(prefix) and (path is None or r.path == path)
        ]

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


# -- additions for the TLS-only providers (Azure sign-in, Google OAuth) and several machines per test ----------


class ThrowawayCA:
    """A CA made for one test, and server certificates it signs for loopback addresses. ca_path is what the
    client trusts (libcloud.security.CA_CERTS_PATH); nothing else is trusted while a test uses it."""

    def __init__(self, directory):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.dir = str(directory)
        self._now = datetime.datetime.now(datetime.UTC)
        self._day = datetime.timedelta(days=1)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockyard test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - self._day)
            .not_valid_after(self._now + self._day)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = f"{self.dir}/test-ca.pem"
        with open(self.ca_path, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, *ips):
        """An ssl.SSLContext serving a certificate for the given loopback IPs (and localhost)."""
        import ssl

        x509 = self._x509
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        sans = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, ips[0] if ips else "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - self._day)
            .not_valid_after(self._now + self._day)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, self._hashes.SHA256())
        )
        base = f"{self.dir}/server-{x509.random_serial_number() % 10**9}"
        with open(base + ".crt", "wb") as f:
            f.write(cert.public_bytes(self._ser.Encoding.PEM))
        with open(base + ".key", "wb") as f:
            f.write(key.private_bytes(self._ser.Encoding.PEM, self._ser.PrivateFormat.PKCS8, self._ser.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(base + ".crt", base + ".key")
        return ctx

    def trust_in_libcloud(self, monkeypatch):
        """libcloud (requests underneath) trusts this CA only; the environment's bundles are set aside."""
        import libcloud.security

        for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", self.ca_path)
        monkeypatch.setattr(libcloud.security, "VERIFY_SSL_CERT", True)
        monkeypatch.setattr(libcloud.security, "CA_CERTS_PATH", self.ca_path)


def fake_api_on_port(model, port, context_for=None, tries=20):
    """A FakeAPI on a fixed port (for a client that hard-codes 443) of a random 127.x.y.z address, so parallel
    test runs do not collide; context_for(host) gives its TLS context. None when the port cannot be bound
    (not root)."""
    import errno
    import random

    for _ in range(tries):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
        try:
            return FakeAPI(model, host=host, port=port, ssl_context=context_for(host) if context_for else None)
        except PermissionError:
            return None
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    return None


def make_named_driver(cls, name, store_root, **values):
    """A driver for machine `name` laid out as in a store (STORE/machines/NAME), so the shared-object lock
    file lands in STORE."""
    import os

    machine_dir = os.path.join(str(store_root), "machines", name)
    os.makedirs(machine_dir, exist_ok=True)
    d = cls(name, machine_dir, {})
    d.set_config_from_flags(options_for(cls, **values))
    d.poll_interval = 0.05
    return d


def run_cli(capsys, store, *args):
    """The real dockyard CLI in this process (so the loopback guard and the test's CA apply):
    returns (exit code, stdout, stderr)."""
    from dockyard.provisioner.cli.main import main

    capsys.readouterr()
    try:
        main(["--storage-path", str(store), *map(str, args)])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
