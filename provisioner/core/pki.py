"""TLS PKI with `cryptography`: the store's CA and client pair, per-machine server certs, expiry and SAN checks."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockyard.provisioner.core.errors import CertError
from dockyard.provisioner.core.files import atomic_write

CA_DAYS = 3650
LEAF_DAYS = 1095
# Certificates start a little in the past so a host whose clock lags still accepts them.
CLOCK_SKEW = datetime.timedelta(minutes=5)
RENEW_BEFORE = datetime.timedelta(days=30)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _user():
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path, key):
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, 0o600, durable=True)


def _write_cert(path, cert):
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644, durable=True)


def load_cert(path: str) -> x509.Certificate:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except FileNotFoundError:
        raise CertError(f"certificate not found: {path}") from None
    except ValueError as e:
        raise CertError(f"certificate {path} is not valid PEM: {e}") from None


def load_key(path: str) -> PrivateKeyTypes:
    try:
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        raise CertError(f"private key not found: {path}") from None
    except (ValueError, TypeError) as e:
        raise CertError(f"private key {path} is unreadable: {e}") from None


def _builder(subject, issuer, public_key, days):
    start = _now() - CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )


def _key_usage(ca):
    """CA: sign certs and CRLs. Leaf (ECDSA): sign handshakes and agree keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(org, cn=None):
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _needs_new(cert_path):
    if not os.path.exists(cert_path):
        return True
    try:
        return load_cert(cert_path).not_valid_after_utc - RENEW_BEFORE < _now()
    except CertError:
        return True


class CertPaths:
    """Where the store keeps its CA and client pair."""

    def __init__(self, certs_dir: str) -> None:
        self.dir = certs_dir
        self.ca = os.path.join(certs_dir, "ca.pem")
        self.ca_key = os.path.join(certs_dir, "ca-key.pem")
        self.cert = os.path.join(certs_dir, "cert.pem")
        self.key = os.path.join(certs_dir, "key.pem")


def ensure_ca(paths: CertPaths, log: Callable[[str], None] = print) -> bool:
    """Create the CA when it is missing or about to expire. Caller holds the store lock."""
    os.makedirs(paths.dir, mode=0o700, exist_ok=True)
    if not _needs_new(paths.ca):
        return False
    if os.path.exists(paths.ca_key) and not os.path.exists(paths.ca):
        raise CertError(f"certificate authority key already exists without its certificate: {paths.ca_key}")
    log(f"Creating CA: {paths.ca}")
    key = _new_key()
    name = _name(_user(), "dockyard CA")
    cert = (
        _builder(name, name, key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(paths.ca_key, key)
    _write_cert(paths.ca, cert)
    # A new CA invalidates the old client cert.
    if os.path.exists(paths.cert):
        os.unlink(paths.cert)
    return True


def _sign_leaf(paths, subject, public_key, *, server, sans=(), days=LEAF_DAYS):
    ca_cert = load_cert(paths.ca)
    ca_key = load_key(paths.ca_key)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (
        _builder(subject, ca_cert.subject, public_key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def ensure_client(paths: CertPaths, log: Callable[[str], None] = print, force: bool = False) -> bool:
    """Create the client pair when missing, expiring, not from the current CA, or when forced."""
    if not force and not _needs_new(paths.cert) and os.path.exists(paths.key) and _issued_by(paths.cert, paths.ca):
        return False
    log(f"Creating client certificate: {paths.cert}")
    key = _new_key()
    cert = _sign_leaf(paths, _name(f"{_user()}.client", "dockyard client"), key.public_key(), server=False)
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return True


def _issued_by(cert_path, ca_path):
    try:
        cert, ca = load_cert(cert_path), load_cert(ca_path)
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:
        return False


def san_entries(hosts: Iterable[str | None]) -> list[x509.GeneralName]:
    """IP-looking values go to IP SANs, the rest to DNS SANs; duplicates dropped, order kept."""
    seen: set[str] = set()
    out: list[x509.GeneralName] = []
    for host in hosts:
        h = (host or "").strip()
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def server_sans(ip: str, hostname: str, extra: Iterable[str] = ()) -> list[str]:
    return [ip, hostname, "localhost", "127.0.0.1", *extra]


def issue_server_cert(
    paths: CertPaths, machine_name: str, cert_path: str, key_path: str, hosts: Iterable[str | None]
) -> x509.Certificate:
    """Issue a server cert for a machine with the given SAN hosts (IPs and names)."""
    key = _new_key()
    cert = _sign_leaf(
        paths,
        _name(f"{_user()}.{machine_name}", machine_name),
        key.public_key(),
        server=True,
        sans=san_entries(hosts),
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert


def cert_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.IPAddress)] + ext.get_values_for_type(x509.DNSName)


def cert_covers(cert_path: str, host: str) -> bool:
    """True when host (an IP or DNS name) is among the cert's SANs."""
    try:
        cert = load_cert(cert_path)
    except CertError:
        return False
    try:
        wanted = str(ipaddress.ip_address(host))
    except ValueError:
        wanted = host.lower()
    return wanted in [s.lower() for s in cert_sans(cert)]


def cert_info(cert_path: str) -> dict[str, Any]:
    """A summary for `inspect`: subject, SANs, validity and whether it has expired."""
    cert = load_cert(cert_path)
    not_after = cert.not_valid_after_utc
    return {
        "Subject": cert.subject.rfc4514_string(),
        "SANs": cert_sans(cert),
        "NotBefore": cert.not_valid_before_utc.isoformat(),
        "NotAfter": not_after.isoformat(),
        "DaysLeft": (not_after - _now()).days,
        "Expired": not_after < _now(),
    }
