"""One build stage's state: its current image, config, layers and history, and the image config
each step commits."""

from __future__ import annotations

import copy
import json

from dockyard.engine import __version__, hostinfo
from dockyard.engine.images.store import Image
from dockyard.engine.timefmt import rfc3339nano

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Stage:
    """The state of one build stage: its current image and config."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.image_id: str | None = None
        self.config: dict = {}
        self.diff_ids: list[str] = []
        self.history: list[dict] = []
        self.author = ""
        self.args: dict[str, str | None] = {}
        self.cmd_set = False

    def load(self, img: Image) -> None:
        full = img.config if isinstance(img.config, dict) else {}
        self.image_id = img.id
        self.config = copy.deepcopy(full.get("config") or {})
        self.config.pop("Image", None)  # the parent's ID: set again at each commit
        self.diff_ids = list(img.diff_ids)
        self.history = copy.deepcopy(full.get("history") or [])
        self.author = full.get("author") or ""

    def copy_from(self, other: "Stage") -> None:
        self.image_id = other.image_id
        self.config = copy.deepcopy(other.config)
        self.diff_ids = list(other.diff_ids)
        self.history = copy.deepcopy(other.history)
        self.author = other.author

    def record_step(self, created_by: str | None, diff_id: str | None, entry: dict | None = None) -> bytes:
        """Add a step (history entry, maybe a layer) and return the new image config's bytes.

        created_by None: the stage's state as an image, without a history entry (FROM scratch).
        entry: the history entry to use (a step restored from a --cache-from image keeps its own).
        """
        now = rfc3339nano()
        if entry is not None:
            now = str(entry.get("created") or now)
            self.history.append(dict(entry))
        elif created_by is not None:
            entry = {"created": now, "created_by": created_by}
            if diff_id is None:
                entry["empty_layer"] = True
            self.history.append(entry)
        if diff_id is not None:
            self.diff_ids.append(diff_id)
        cfg = dict(self.config)
        cfg["Image"] = self.image_id or ""
        image_config = {
            "architecture": hostinfo.go_arch(),
            "os": "linux",
            "config": cfg,
            "created": now,
            "docker_version": __version__,
            "history": self.history,
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
        }
        if self.author:
            image_config["author"] = self.author
        return json.dumps(image_config, separators=(",", ":"), sort_keys=True).encode("utf-8")
