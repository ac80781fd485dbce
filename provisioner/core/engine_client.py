"""A tiny Docker Engine API client over mutual TLS: ping and version, with short timeouts.

Used by create/provision (wait for the engine), ls/version (server version) and env (cert check).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from dockyard.provisioner.core.errors import CertError, EngineUnreachable

debug_log = logging.getLogger(__name__)  # dockyard -D: every request with its status and time
FAST_POLL_DELAY = 0.05  # wait_ready: seconds between tries while the engine is expected any moment
FAST_POLL_FOR = 3.0


class TLSFiles:
    """The client side of mutual TLS: the CA that signed the engine's cert, and the client pair."""

    def __init__(self, ca: str, cert: str, key: str) -> None:
        self.ca, self.cert, self.key = ca, cert, key


def tls_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
    ctx.load_cert_chain(files.cert, files.key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _split(url):
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "https") or not parts.hostname:
        raise EngineUnreachable(f"unsupported engine URL {url!r}")
    return parts.hostname, parts.port or 2376


def request(
    url: str, files: TLSFiles, method: str, path: str, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request; returns (status, headers dict, body bytes). TLS problems raise CertError."""
    started = time.monotonic()
    try:
        status, headers, body = _request(url, files, method, path, timeout)
    except (CertError, EngineUnreachable) as e:
        debug_log.debug("engine %s %s%s -> %s after %.3fs", method, url, path, e, time.monotonic() - started)
        raise
    debug_log.debug("engine %s %s%s -> HTTP %d in %.3fs", method, url, path, status, time.monotonic() - started)
    return status, headers, body


def _request(url: str, files: TLSFiles, method: str, path: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    host, port = _split(url)
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls_context(files))
    try:
        conn.request(method, path, headers={"User-Agent": "dockyard"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except ssl.SSLCertVerificationError as e:
        raise CertError(
            f'There was an error validating certificates for host "{host}:{port}": {e.verify_message}'
        ) from None
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
        # A port forward (QEMU, VirtualBox) accepts and then drops the connection while nothing listens
        # behind it yet: not a certificate problem, keep waiting.
        raise EngineUnreachable(f"engine at {host}:{port} closed the connection during the TLS handshake") from e
    except ssl.SSLError as e:
        raise CertError(f'TLS handshake with "{host}:{port}" failed: {e.reason or e}') from None
    except (OSError, http.client.HTTPException) as e:
        raise EngineUnreachable(f"engine at {host}:{port} does not answer: {e or type(e).__name__}") from None
    finally:
        conn.close()


def ping(url: str, files: TLSFiles, timeout: float = 5.0) -> dict[str, str]:
    status, headers, body = request(url, files, "GET", "/_ping", timeout)
    if status != 200:
        raise EngineUnreachable(f"engine at {url} answered /_ping with HTTP {status}")
    return headers


def version(url: str, files: TLSFiles, timeout: float = 5.0) -> Any:
    status, _, body = request(url, files, "GET", "/version", timeout)
    if status != 200:
        raise EngineUnreachable(f"engine at {url} answered /version with HTTP {status}")
    return json.loads(body)


def wait_ready(
    url: str,
    files: TLSFiles,
    timeout: float = 60.0,
    on_retry: Callable[[EngineUnreachable | None], None] | None = None,
) -> dict[str, str]:
    """Poll /_ping until it answers; CertError is not retried (it will not fix itself).

    Every FAST_POLL_DELAY for the first FAST_POLL_FOR seconds (a fresh engine answers well within them, and a
    refused connection costs nothing), then backing off to one try a second."""
    started = time.monotonic()
    deadline = started + timeout
    delay, last = FAST_POLL_DELAY, None
    while True:
        try:
            return ping(url, files, timeout=min(5.0, max(1.0, deadline - time.monotonic())))
        except EngineUnreachable as e:
            last = e
        if time.monotonic() + delay > deadline:
            raise EngineUnreachable(f"engine did not answer /_ping over TLS at {url} within {timeout:.0f}s: {last}")
        if on_retry:
            on_retry(last)
        time.sleep(delay)
        if time.monotonic() - started >= FAST_POLL_FOR:
            delay = min(delay * 2, 1.0)


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
