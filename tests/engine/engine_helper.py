"""Test helpers: run dockyard-engine as a subprocess and talk HTTP to it over unix or TLS."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "Daemon has completed initialization"
START_DEADLINE = 20.0  # only bounds a hang; a healthy start takes well under a second


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def client_tls_context(certdir) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certdir.ca)
    ctx.load_cert_chain(certdir.cert, certdir.key)
    return ctx


class EngineProcess:
    """A dockyard-engine subprocess; stderr is collected continuously by a thread."""

    def __init__(self, argv, env=None):
        self.argv = argv
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(REPO),
            env=env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, needle, start=0, deadline=START_DEADLINE) -> str | None:
        """The first stderr line (from index `start`) containing `needle`; None if the process died."""

        def find():
            for line in self.lines[start:]:
                if needle in line:
                    return line
            return None

        with self._cond:
            ok = self._cond.wait_for(
                lambda: find() is not None or (self.proc.poll() is not None and not self._reader.is_alive()),
                timeout=deadline,
            )
            if not ok:
                raise AssertionError("engine never logged %r:\n%s" % (needle, "\n".join(self.lines)))
            return find()

    def wait_ready(self):
        if self.wait_for_line(READY_LINE) is None:
            raise AssertionError("engine exited (rc=%s) before ready:\n%s" % (self.proc.poll(), self.stderr))

    def listen_addresses(self) -> list[str]:
        return [m.group(1) for m in (re.search(r"API listen on (\S+)", l) for l in self.lines) if m]

    def tcp_port(self) -> int:
        for addr in self.listen_addresses():
            if not addr.startswith("/"):
                return int(addr.rsplit(":", 1)[1])
        raise AssertionError("no tcp listener in:\n" + self.stderr)

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=START_DEADLINE)
        finally:
            self._reader.join(timeout=5)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def http_get(path, unix=None, port=None, tls=None, method="GET", body=None, headers=None):
    """(status, headers dict (lower-case), body bytes) via http.client."""
    if unix:
        conn = UnixHTTPConnection(unix)
    elif tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def get_json(path, **kw):
    status, headers, data = http_get(path, **kw)
    assert status == 200, (status, data)
    assert headers["content-type"] == "application/json"
    return json.loads(data)
