"""The build cache, keyed as Docker's classic builder keys it: parent image + step (+ copied content).

data-root/build/cache.json maps sha256(parent image ID, the step's history text, the checksum of
what COPY/ADD copies) to the image the step produced. An entry counts only while its image exists,
so `docker rmi`/`image prune` invalidate it; nothing else is trusted from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.images import digest

MAX_ENTRIES = 20000


class BuildCache:
    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "cache.json")
        self._lock = threading.Lock()
        self._entries = self._read()

    def _read(self):
        try:
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        if not isinstance(data, dict):
            return {}
        out = {}
        for key, value in data.items():
            if isinstance(key, str) and isinstance(value, str) and digest.is_sha256(value):
                out[key] = value
        return out

    @staticmethod
    def key(parent_id: str | None, created_by: str, content: str = "") -> str:
        text = "\0".join((parent_id or "scratch", created_by, content))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, image_id: str) -> None:
        with self._lock:
            self._entries[key] = image_id
            if len(self._entries) > MAX_ENTRIES:
                for old in list(self._entries)[: len(self._entries) - MAX_ENTRIES]:
                    del self._entries[old]
            atomic_write_json(self.path, self._entries, durable=False, compact=True)

    def forget(self, key: str) -> None:
        with self._lock:
            if self._entries.pop(key, None) is not None:
                atomic_write_json(self.path, self._entries, durable=False, compact=True)

    def clear(self) -> list[str]:
        """`docker builder prune`: forget every entry (the images stay); -> the image IDs forgotten."""
        with self._lock:
            gone = sorted(set(self._entries.values()))
            self._entries = {}
            atomic_write_json(self.path, self._entries, durable=False, compact=True)
        return gone
