"""PKI: CA, client and server certs made with cryptography, verified with Python's ssl as a real peer."""

import datetime
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from dockyard.provisioner.core import pki
from dockyard.provisioner.core.errors import CertError


@pytest.fixture
def paths(tmp_path):
    p = pki.CertPaths(str(tmp_path / "certs"))
    pki.ensure_ca(p, log=lambda m: None)
    pki.ensure_client(p, log=lambda m: None)
    return p


def test_ca_and_client(paths):
    ca = pki.load_cert(paths.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    client = pki.load_cert(paths.cert)
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    client.verify_directly_issued_by(ca)
    for key in (paths.ca_key, paths.key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_ensure_is_idempotent(paths):
    before = open(paths.ca, "rb").read(), open(paths.cert, "rb").read()
    assert pki.ensure_ca(paths, log=lambda m: None) is False
    assert pki.ensure_client(paths, log=lambda m: None) is False
    assert (open(paths.ca, "rb").read(), open(paths.cert, "rb").read()) == before


def test_forced_client_reissue_keeps_ca(paths):
    ca_before = open(paths.ca, "rb").read()
    cert_before = open(paths.cert, "rb").read()
    assert pki.ensure_client(paths, log=lambda m: None, force=True)
    assert open(paths.ca, "rb").read() == ca_before
    assert open(paths.cert, "rb").read() != cert_before


def test_orphan_ca_key_refused(tmp_path):
    p = pki.CertPaths(str(tmp_path))
    open(p.ca_key, "w").write("x")
    with pytest.raises(CertError, match="already exists"):
        pki.ensure_ca(p, log=lambda m: None)


def test_server_cert_sans(paths, tmp_path):
    cert_path, key_path = str(tmp_path / "server.pem"), str(tmp_path / "server-key.pem")
    hosts = pki.server_sans("10.231.0.2", "h1", ["extra.example", "192.0.2.7"])
    cert = pki.issue_server_cert(paths, "h1", cert_path, key_path, hosts)
    sans = pki.cert_sans(cert)
    for h in ("10.231.0.2", "127.0.0.1", "192.0.2.7", "h1", "localhost", "extra.example"):
        assert h in sans
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.cert_covers(cert_path, "10.231.0.2")
    assert not pki.cert_covers(cert_path, "10.231.0.6")
    info = pki.cert_info(cert_path)
    assert info["Expired"] is False and 1000 < info["DaysLeft"] <= 1095
    assert datetime.datetime.fromisoformat(info["NotAfter"]) > datetime.datetime.now(datetime.timezone.utc)


def test_mutual_tls_with_python_ssl(paths, tmp_path):
    """A real handshake: server cert for 127.0.0.1 + client cert, both from our CA."""
    cert_path, key_path = str(tmp_path / "s.pem"), str(tmp_path / "s-key.pem")
    pki.issue_server_cert(paths, "m", cert_path, key_path, pki.server_sans("127.0.0.1", "m"))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert_path, key_path)
    sctx.load_verify_locations(paths.ca)
    sctx.verify_mode = ssl.CERT_REQUIRED
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    peer = {}

    def serve():
        conn, _ = lsock.accept()
        with sctx.wrap_socket(conn, server_side=True) as tls:
            peer["cert"] = tls.getpeercert()
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    cctx = ssl.create_default_context(cafile=paths.ca)
    cctx.load_cert_chain(paths.cert, paths.key)
    with cctx.wrap_socket(socket.create_connection(lsock.getsockname()), server_hostname="127.0.0.1") as c:
        assert c.recv(2) == b"ok"
    t.join()
    lsock.close()
    assert peer["cert"]


def test_bad_pem(tmp_path):
    p = tmp_path / "x.pem"
    p.write_text("garbage")
    with pytest.raises(CertError, match="not valid PEM"):
        pki.load_cert(str(p))
