"""SSH keys: ed25519 key pairs, loading private keys, permission checks, and pinned host keys."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dockyard.provisioner.core.errors import SSHError
from dockyard.provisioner.core.files import atomic_write


def generate_keypair(
    private_path: str | os.PathLike[str], comment: str = "dockyard", *, overwrite: bool = False
) -> str:
    """Write a new ed25519 key (OpenSSH format, 0600) and its .pub (0644); return the public key line."""
    private_path = os.fspath(private_path)
    if not overwrite and os.path.exists(private_path):
        raise SSHError(f"SSH key {private_path} already exists")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + (f" {comment}" if comment else "")
    try:
        atomic_write(private_path, private, 0o600, durable=True)
        atomic_write(private_path + ".pub", (line + "\n").encode(), 0o644, durable=True)
    except OSError as e:
        raise SSHError(f"cannot write SSH key {private_path}: {e.strerror or e}") from None
    return line


def load_private_key(path: str | os.PathLike[str]) -> paramiko.PKey:
    """Load an unencrypted ed25519, rsa or ecdsa private key (OpenSSH or PEM format)."""
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise SSHError(
            f"SSH key {path} is protected by a passphrase; dockyard needs a key without one "
            f'(remove it with "ssh-keygen -p -f {path}")'
        ) from None
    except OSError as e:
        raise SSHError(f"cannot read SSH key {path}: {e.strerror or e}") from None
    except Exception as e:  # paramiko/cryptography raise a zoo of types for unparsable keys
        if "password" in str(e).lower() or "encrypted" in str(e).lower():
            raise SSHError(f"SSH key {path} is protected by a passphrase; dockyard needs a key without one") from None
        raise SSHError(f"{path} is not a usable SSH private key (ed25519, rsa or ecdsa expected): {e}") from None


def check_key_permissions(path: str | os.PathLike[str]) -> None:
    """Refuse a private key that group or others can access, as ssh (and Docker Machine) do."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise SSHError(f"cannot use SSH key {path}: {e.strerror}") from None
    if mode & 0o077:
        raise SSHError(
            f"permissions {mode:#o} for SSH key {path} are too open: it must be accessible by its owner only "
            f'(run "chmod 600 {path}")'
        )


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def read_pinned_host_key(path: str | os.PathLike[str]) -> paramiko.PKey | None:
    """The pinned host key, or None if the file does not exist yet."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SSHError(f"cannot read pinned host key {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1], validate=True))
    except Exception as e:
        raise SSHError(f'pinned host key file {path} is malformed (expected one line "keytype base64"): {e}') from None


def write_pinned_host_key(path: str | os.PathLike[str], key: paramiko.PKey) -> None:
    atomic_write(path, f"{key.get_name()} {key.get_base64()}\n".encode(), 0o600, durable=True)
