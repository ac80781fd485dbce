"""Throwaway PKI for engine tests: a CA, server and client certificates (cryptography, EC P-256)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(cn: str = "dockyard test CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(days=1))
        .not_valid_after(_now() + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(
    ca: Issued,
    cn: str,
    *,
    server: bool = False,
    ips=(),
    dns=(),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate: EKU serverAuth (with SANs) if server, else clientAuth."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - dt.timedelta(days=1))
        .not_valid_after(not_after or _now() + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def expired_client(ca: Issued, cn: str = "expired client") -> Issued:
    return issue(ca, cn, not_before=_now() - dt.timedelta(days=10), not_after=_now() - dt.timedelta(days=1))


@dataclass
class CertDir:
    """A directory laid out as DOCKER_CERT_PATH expects: ca.pem, cert.pem, key.pem."""

    path: Path

    @property
    def ca(self) -> str:
        return str(self.path / "ca.pem")

    @property
    def cert(self) -> str:
        return str(self.path / "cert.pem")

    @property
    def key(self) -> str:
        return str(self.path / "key.pem")


def write_cert_dir(path: Path, ca: Issued, leaf: Issued) -> CertDir:
    path.mkdir(parents=True, exist_ok=True)
    (path / "ca.pem").write_bytes(ca.cert_pem())
    (path / "cert.pem").write_bytes(leaf.cert_pem())
    key = path / "key.pem"
    key.write_bytes(leaf.key_pem())
    key.chmod(0o600)
    return CertDir(path)


@dataclass
class Pki:
    """Server cert dir (for the daemon) and client cert dirs (for clients), all under `root`."""

    root: Path
    server: CertDir
    client: CertDir
    other_ca_client: CertDir  # a valid-looking client cert from an unrelated CA
    expired_client: CertDir


def make_pki(root: Path, cn_prefix: str = "test") -> Pki:
    ca = make_ca(f"{cn_prefix} CA")
    other = make_ca(f"{cn_prefix} other CA")
    server = write_cert_dir(
        root / "server",
        ca,
        issue(ca, f"{cn_prefix} server", server=True, ips=["127.0.0.1"], dns=["localhost"]),
    )
    client = write_cert_dir(root / "client", ca, issue(ca, f"{cn_prefix} client"))
    other_client = write_cert_dir(root / "other", other, issue(other, f"{cn_prefix} intruder"))
    expired = write_cert_dir(root / "expired", ca, expired_client(ca))
    return Pki(root, server, client, other_client, expired)
