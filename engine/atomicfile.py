"""The engine's one way to replace a file atomically: readers see the old or the new content, never half.

`durable` says whether the content must survive a power cut (fsync before the rename) or only a crash
of the engine: state that can be rebuilt (container state, pid file) skips the fsync, which costs
milliseconds on every container start.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Any


def atomic_write(path: str, data: bytes, *, durable: bool, mode: int = 0o644) -> None:
    """Replace `path` with `data` through a temp file next to it and a rename."""
    tmp = "%s.%s.tmp" % (path, os.urandom(6).hex())  # unique per call: threads and processes write at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str, obj: Any, *, durable: bool, compact: bool = False) -> None:
    """`obj` as JSON: readable (indented, sorted keys, final newline), or `compact` for hot paths."""
    if compact:
        text = json.dumps(obj, separators=(",", ":"))
    else:
        text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    atomic_write(path, text.encode("utf-8"), durable=durable)
