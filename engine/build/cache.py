"""The build cache, keyed as Docker's classic builder keys it: parent image + step (+ copied content).

One small file per entry, data-root/build/cache/<key>, holds the ID of the image the step produced;
the key is sha256(parent image ID, the step's history text, the checksum of what COPY/ADD copies).
An entry counts only while its image exists (`docker rmi`/`image prune` invalidate it); nothing but
a well-formed image ID is taken from the file.
"""

from __future__ import annotations

import hashlib
import os
import re

from dockyard.engine.atomicfile import atomic_write
from dockyard.engine.images import digest

_KEY = re.compile(r"^[0-9a-f]{64}$")


class BuildCache:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "cache")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    @staticmethod
    def key(parent_id: str | None, created_by: str, content: str = "") -> str:
        text = "\0".join((parent_id or "scratch", created_by, content))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def _path(self, key):
        if not _KEY.match(key):
            raise ValueError("bad cache key")
        return os.path.join(self.dir, key)

    def get(self, key: str) -> str | None:
        try:
            with open(self._path(key), "rb") as fh:
                value = fh.read(100).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        return value if digest.is_sha256(value) else None

    def put(self, key: str, image_id: str) -> None:
        digest.check(image_id, "image ID")
        atomic_write(self._path(key), image_id.encode("ascii"), durable=False)

    def clear(self) -> list[str]:
        """`docker builder prune`: forget every entry (the images stay); -> the image IDs forgotten."""
        gone = set()
        for name in os.listdir(self.dir):
            if not _KEY.match(name):
                continue
            value = self.get(name)
            if value:
                gone.add(value)
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        return sorted(gone)
