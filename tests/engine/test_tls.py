"""TCP with mutual TLS: good clients served, bad certificates refused at the handshake."""

import shutil
import signal
import socket
import ssl

import pytest

from dockyard.engine.listeners import make_server_tls_context
from tests.engine.certs_helper import issue, make_ca, write_cert_dir
from tests.engine.engine_helper import client_tls_context, get_json, http_get


def tls_args(certdir):
    return ["--tlsverify", "--tlscacert", certdir.ca, "--tlscert", certdir.cert, "--tlskey", certdir.key]


@pytest.fixture(scope="module")
def tls_engine(module_engine_starter, pki):
    proc = module_engine_starter("-H", "tcp://127.0.0.1:0", *tls_args(pki.server))
    proc.port = proc.tcp_port()
    return proc


def attempt(port, ctx):
    """Handshake, send a ping, read the answer. Returns the response bytes or raises."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            # With TLS 1.3 the server checks the client cert after the client's handshake
            # finished, so the refusal can surface on the first read.
            tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    return data
                data += chunk
    finally:
        raw.close()


def refusal(port, ctx):
    """Handshake and wait for the server's verdict; returns the SSLError it sent.

    Nothing is sent after the handshake, so the server's alert is not lost to a TCP
    reset (with TLS 1.3 the client's handshake completes before the server checks it).
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.recv(1)
    except ssl.SSLError as exc:
        return exc
    finally:
        raw.close()
    raise AssertionError("the server accepted the client")


def test_good_client_served(tls_engine, pki):
    ctx = client_tls_context(pki.client)
    data = attempt(tls_engine.port, ctx)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"OK")
    version = get_json("/v1.50/version", port=tls_engine.port, tls=ctx)
    assert version["Version"] == "0.1.0"
    info = get_json("/info", port=tls_engine.port, tls=ctx)
    assert info["Warnings"] == [w for w in info["Warnings"] if "without encryption" not in w]


def test_client_without_cert_refused(tls_engine, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.client.ca)
    reason = refusal(tls_engine.port, ctx).reason
    assert reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE")


def test_client_cert_from_other_ca_refused(tls_engine, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.client.ca)  # trusts the server...
    ctx.load_cert_chain(pki.other_ca_client.cert, pki.other_ca_client.key)  # ...but is a stranger
    assert refusal(tls_engine.port, ctx).reason == "TLSV1_ALERT_UNKNOWN_CA"


def test_expired_client_cert_refused(tls_engine, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.client.ca)
    ctx.load_cert_chain(pki.expired_client.cert, pki.expired_client.key)
    assert refusal(tls_engine.port, ctx).reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


def test_plain_http_on_tls_port_gets_nothing(tls_engine):
    status_line = b""
    with socket.create_connection(("127.0.0.1", tls_engine.port), timeout=10) as s:
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            status_line = s.recv(4096)
        except ConnectionResetError:
            pass
    assert not status_line.startswith(b"HTTP/1.1 200")


def test_server_context_policy(pki):
    ctx = make_server_tls_context(pki.server.ca, pki.server.cert, pki.server.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_stalled_handshake_does_not_block_others(tls_engine, pki):
    # Clients that connect and never send a ClientHello: the handshake runs in their own
    # threads, so a well-behaved client is still served.
    stalled = [socket.create_connection(("127.0.0.1", tls_engine.port), timeout=10) for _ in range(5)]
    try:
        data = attempt(tls_engine.port, client_tls_context(pki.client))
        assert data.startswith(b"HTTP/1.1 200 OK")
    finally:
        for s in stalled:
            s.close()


def test_unix_and_tcp_together(start_engine, pki):
    proc = start_engine("-H", "unix://" + start_engine.socket, "-H", "tcp://127.0.0.1:0", *tls_args(pki.server))
    assert len(proc.listen_addresses()) == 2
    assert http_get("/_ping", unix=start_engine.socket)[0] == 200
    assert http_get("/_ping", port=proc.tcp_port(), tls=client_tls_context(pki.client))[0] == 200


def test_missing_cert_files_fail_startup(start_engine, pki, tmp_path):
    proc = start_engine(
        "-H",
        "tcp://127.0.0.1:0",
        "--tlsverify",
        "--tlscacert",
        pki.server.ca,
        "--tlscert",
        str(tmp_path / "nope.pem"),
        "--tlskey",
        pki.server.key,
        wait=False,
    )
    assert proc.proc.wait(timeout=20) == 1
    assert "--tlscert: no such file" in proc.stderr


def test_sighup_reloads_certificates(start_engine, tmp_path, pki):
    live = tmp_path / "live"
    shutil.copytree(pki.server.path, live)
    proc = start_engine(
        "-H",
        "tcp://127.0.0.1:0",
        "--tlsverify",
        "--tlscacert",
        str(live / "ca.pem"),
        "--tlscert",
        str(live / "cert.pem"),
        "--tlskey",
        str(live / "key.pem"),
    )
    port = proc.tcp_port()
    old_client = client_tls_context(pki.client)
    assert attempt(port, old_client).startswith(b"HTTP/1.1 200")

    # Rotate to a brand-new CA and server certificate, then SIGHUP.
    new_ca = make_ca("rotated CA")
    new_server = write_cert_dir(
        tmp_path / "new-server", new_ca, issue(new_ca, "rotated server", server=True, ips=["127.0.0.1"])
    )
    new_client = write_cert_dir(tmp_path / "new-client", new_ca, issue(new_ca, "rotated client"))
    for name in ("ca.pem", "cert.pem", "key.pem"):
        shutil.copy(new_server.path / name, live / name)
    mark = len(proc.lines)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait_for_line("TLS certificates reloaded", start=mark) is not None

    assert attempt(port, client_tls_context(new_client)).startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLError):
        attempt(port, old_client)  # old CA: the client no longer trusts the server's new cert
    stale_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stale_client.load_verify_locations(new_server.ca)
    stale_client.load_cert_chain(pki.client.cert, pki.client.key)
    # The server no longer trusts client certs of the old CA.
    assert refusal(port, stale_client).reason == "TLSV1_ALERT_UNKNOWN_CA"

    # A broken set on disk is refused and the current one kept.
    (live / "key.pem").write_text("garbage")
    mark = len(proc.lines)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait_for_line("TLS reload failed", start=mark) is not None
    assert attempt(port, client_tls_context(new_client)).startswith(b"HTTP/1.1 200")
    assert proc.stop() == 0
