"""Files the client writes: atomic replacement (with or without fsync) and exclusive file locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from typing import BinaryIO

from dockyard.provisioner.core.errors import StoreError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int, *, durable: bool) -> Iterator[BinaryIO]:
    """A binary file that replaces path only when the block ends without an exception: readers see the old
    file or the new one, never half of one. durable=True fsyncs the file and its directory, so the new
    content survives a crash (the store's records, keys, certs); False skips that for files that can be
    written again (caches, copies, downloads)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:  # the rename itself must survive a crash too
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600, *, durable: bool) -> None:
    """Replace path with data (str is UTF-8 encoded) atomically; see atomic_writer for `durable`."""
    with atomic_writer(path, mode, durable=durable) as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def file_lock(path: str, timeout: float = 60.0, what: str = "store") -> Iterator[None]:
    """An exclusive flock on path; waits up to timeout seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"timed out after {timeout:.0f}s waiting for the lock on {what} ({path})")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
