"""Host folders shared into a qemu machine over virtio-9p: the user's home by default, `--share PATH[:ro]`
(repeatable) or `--no-share`; each is mounted in the guest at the same path, so `docker run -v $PWD:/app`
sees the laptop's files, and changes on either side show at once (9p without a cache)."""

from __future__ import annotations

import os

from dockyard.provisioner.core.errors import DriverError

MAX_SHARES = 16
# Guest paths a share must not cover: the guest's own system and its SSH user's home (cloud-init writes the
# SSH keys there, and they must never land in a laptop folder).
RESERVED: tuple[str, ...] = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc")
RESERVED += ("/run", "/sbin", "/sys", "/usr", "/var")
NOT_ITSELF = ("/", "/tmp")  # folders below these are fine, the folder itself is the guest's
# mapped-xattr: QEMU, not root, keeps the guest's owners and modes in extended attributes of the files it
# creates, so a non-root QEMU never needs chown on the laptop.
SECURITY_MODEL = "mapped-xattr"


def _overlaps(path: str, other: str) -> bool:
    return path == other or path.startswith(other.rstrip("/") + "/") or other.startswith(path.rstrip("/") + "/")


def check(path: str, ssh_user: str) -> str:
    """The normalized absolute path of a share, or a DriverError saying why it cannot be one."""
    if not os.path.isabs(path):
        raise DriverError(f"--share {path}: give an absolute path")
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise DriverError(f"--share {path}: no such directory")
    if real in NOT_ITSELF:
        raise DriverError(f"--share {path}: {real} is the machine's own; share a folder below it")
    for reserved in (*RESERVED, f"/home/{ssh_user}"):
        if _overlaps(real, reserved):
            raise DriverError(f"--share {path}: it would cover the machine's own {reserved}; share a folder below it")
    return real


def parse(values: list[str], ssh_user: str) -> list[dict]:
    """--share values (PATH or PATH:ro / PATH:rw) -> [{"Path", "Tag", "ReadOnly"}]."""
    shares: list[dict] = []
    for value in values:
        path, readonly = value, False
        for suffix, ro in ((":ro", True), (":rw", False)):
            if value.endswith(suffix):
                path, readonly = value[: -len(suffix)], ro
        real = check(path, ssh_user)
        if any(_overlaps(real, s["Path"]) for s in shares):
            raise DriverError(f"--share {path}: overlaps another --share")
        shares.append({"Path": real, "Tag": f"share{len(shares)}", "ReadOnly": readonly})
    if len(shares) > MAX_SHARES:
        raise DriverError(f"at most {MAX_SHARES} --share folders")
    return shares


def default(ssh_user: str) -> tuple[list[dict], str]:
    """The home directory as the one share, or no share and the reason (a warning for the user)."""
    home = os.path.expanduser("~")
    try:
        return parse([home], ssh_user), ""
    except DriverError as e:
        return [], f"your home directory is not shared with the machine: {e}"


def virtfs_args(shares: list[dict], escape) -> list[str]:
    argv: list[str] = []
    for s in shares:
        opts = f"local,path={escape(s['Path'])},mount_tag={s['Tag']},security_model={SECURITY_MODEL},id={s['Tag']}"
        argv += ["-virtfs", opts + (",readonly=on" if s.get("ReadOnly") else "")]
    return argv
