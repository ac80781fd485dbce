"""Which compressed registry blobs hold a layer, and in which repositories they were seen.

A layer is stored uncompressed; a registry knows it by the digest of its compressed blob. After a pull
verified a blob against its digest and its content against the layer's diff ID, or after a push uploaded
one, the pair is recorded here, so a later push can ask the registry for that blob (HEAD), mount it
from another repository of the same registry, or skip compressing the layer again, as Docker's v2
metadata service does. Records are keyed by the (checked) diff ID; nothing in them ever names a path.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, List

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.images import digest

MAX_BLOBS = 8  # per layer: different compressions of the same content
MAX_SOURCES = 16  # per blob: repositories it was seen in
MAX_RECORD = 64 << 10
LAYER_MEDIA_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip",
)

_lock = threading.Lock()


class DistributionMetadata:
    def __init__(self, image_root: str) -> None:
        self.root = os.path.join(image_root, "distribution")

    def _path(self, diff_id: str) -> str:
        return os.path.join(self.root, digest.hex_of(diff_id, "diff ID") + ".json")

    def blobs(self, diff_id: str) -> List[Dict[str, Any]]:
        """Known blobs of a layer: [{"digest", "size", "mediaType", "sources": ["host/repo", ...]}]."""
        try:
            with open(self._path(diff_id), "rb") as fh:
                raw = fh.read(MAX_RECORD + 1)
            data = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_RECORD else {}
        except (OSError, ValueError, UnicodeDecodeError):
            return []
        out = []
        for blob in data.get("blobs", []) if isinstance(data, dict) else []:
            if not isinstance(blob, dict) or not digest.is_sha256(blob.get("digest")):
                continue
            size = blob.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                continue
            media = blob.get("mediaType")
            sources = [s for s in blob.get("sources") or [] if isinstance(s, str)][:MAX_SOURCES]
            out.append(
                {
                    "digest": blob["digest"],
                    "size": size,
                    "mediaType": media if media in LAYER_MEDIA_TYPES else LAYER_MEDIA_TYPES[0],
                    "sources": sources,
                }
            )
        return out[:MAX_BLOBS]

    def add(self, diff_id: str, blob_digest: str, size: int, media_type: str, source: str) -> None:
        """Record that `blob_digest` (size bytes, compressed) holds layer `diff_id` and lives in `source`."""
        digest.check(blob_digest, "blob digest")
        with _lock:
            blobs = self.blobs(diff_id)
            for blob in blobs:
                if blob["digest"] == blob_digest:
                    if source not in blob["sources"]:
                        blob["sources"] = ([source] + blob["sources"])[:MAX_SOURCES]
                    break
            else:
                media = media_type if media_type in LAYER_MEDIA_TYPES else LAYER_MEDIA_TYPES[0]
                blobs.insert(0, {"digest": blob_digest, "size": size, "mediaType": media, "sources": [source]})
            os.makedirs(self.root, exist_ok=True)
            atomic_write_json(self._path(diff_id), {"blobs": blobs[:MAX_BLOBS]}, durable=False)
