"""Local volumes: data-root/volumes/<name>/_data plus meta.json (labels, options, created, anonymous).

volumes/ and volumes/<name> are 0700: a container can put a setuid-root file into its volume, and
no host user other than root may reach it (containers get _data by a bind mount, which needs no
search permission on its parents).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
import uuid
from typing import Callable, List  # List: the class has a method named list

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.errors import Conflict, InvalidParameter, NotFound
from dockyard.engine.images.layers import read_json

VOLUME_DIR_MODE = 0o700
_VALID_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
ANONYMOUS_LABEL = "com.docker.volume.anonymous"


def rfc3339_local(ts):
    """moby's volume CreatedAt: RFC 3339 seconds with the local offset, e.g. 2024-01-01T00:00:00Z."""
    tm = time.localtime(int(ts))
    off = tm.tm_gmtoff or 0
    if off == 0:
        suffix = "Z"
    else:
        sign = "+" if off > 0 else "-"
        off = abs(off)
        suffix = "%s%02d:%02d" % (sign, off // 3600, (off % 3600) // 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + suffix


class Volume:
    def __init__(self, store, name, meta):
        self.store = store
        self.name = name
        self.meta = meta

    @property
    def path(self):
        return os.path.join(self.store.root, self.name)

    @property
    def mountpoint(self):
        return os.path.join(self.path, "_data")

    @property
    def labels(self):
        return dict(self.meta.get("Labels") or {})

    @property
    def anonymous(self):
        return bool(self.meta.get("Anonymous"))

    @property
    def created(self):
        return float(self.meta.get("Created", 0))

    def to_api(self):
        """The Volume object of the API (docker volume inspect / ls)."""
        return {
            "CreatedAt": rfc3339_local(self.created),
            "Driver": "local",
            "Labels": self.labels,
            "Mountpoint": self.mountpoint,
            "Name": self.name,
            "Options": self.meta.get("Options") or None,
            "Scope": "local",
        }

    def disk_usage(self):
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.mountpoint):
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total


class VolumeStore:
    """The local volumes (req.engine.volumes): create, inspect, remove, prune, who uses them."""

    def __init__(self, data_root: str, root_owner: tuple[int, int] | None = None) -> None:
        """root_owner: with user namespace remapping, the host uid/gid of the containers' root (owns _data)."""
        self.root = os.path.join(data_root, "volumes")
        self.root_owner = root_owner
        os.makedirs(self.root, mode=VOLUME_DIR_MODE, exist_ok=True)
        self.fix_modes()
        self._lock = threading.RLock()
        self._usage_check: Callable[[str], List[str]] | None = None

    def fix_modes(self) -> None:
        """Volume dirs made by older engines (0701/0711) lose their search bit for other users."""
        os.chmod(self.root, VOLUME_DIR_MODE)
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != VOLUME_DIR_MODE:
                os.chmod(path, VOLUME_DIR_MODE)

    def set_usage_check(self, fn: Callable[[str], List[str]]) -> None:
        """fn(volume_name) -> list of container IDs that mount the volume."""
        self._usage_check = fn

    def users(self, name: str) -> List[str]:
        if self._usage_check is None:
            return []
        return list(self._usage_check(name) or [])

    @staticmethod
    def validate_name(name: str) -> None:
        if len(name) < 2 and _VALID_NAME.fullmatch(name + "a"):
            raise InvalidParameter("volume name is too short, names should be at least two alphanumeric characters")
        if not _VALID_NAME.fullmatch(name):
            raise InvalidParameter(
                '"%s" includes invalid characters for a local volume name, only '
                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
                "directory, use absolute path" % name
            )

    def create(
        self,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        anonymous: bool = False,
        driver: str | None = "local",
        options: dict[str, str] | None = None,
    ) -> Volume:
        """Create (or return the existing) volume; anonymous ones get a random 64-hex name."""
        if driver not in (None, "", "local"):
            raise NotFound("plugin %s not found" % driver)
        if options:
            raise InvalidParameter(
                "volume driver options are not supported by dockyard (got %s)" % ", ".join(sorted(options))
            )
        if not name:
            name = uuid.uuid4().hex + uuid.uuid4().hex
            anonymous = True
        self.validate_name(name)
        with self._lock:
            existing = self._load(name)
            if existing is not None:
                return existing
            labels = dict(labels or {})
            if anonymous:
                labels.setdefault(ANONYMOUS_LABEL, "")
            meta = {
                "Name": name,
                "Created": time.time(),
                "Labels": labels,
                "Options": None,
                "Anonymous": bool(anonymous),
            }
            stage = os.path.join(self.root, ".new-%s" % uuid.uuid4().hex[:12])
            os.mkdir(stage, VOLUME_DIR_MODE)
            os.mkdir(os.path.join(stage, "_data"), 0o755)
            if self.root_owner is not None:
                os.chown(os.path.join(stage, "_data"), *self.root_owner)
            atomic_write_json(os.path.join(stage, "meta.json"), meta, durable=True)
            os.rename(stage, os.path.join(self.root, name))
            return Volume(self, name, meta)

    def _load(self, name):
        if not name or "/" in name or name.startswith("."):
            return None
        meta = read_json(os.path.join(self.root, name, "meta.json"))
        if meta is None:
            return None
        return Volume(self, name, meta)

    def get(self, name: str) -> Volume:
        vol = self._load(name)
        if vol is None:
            raise NotFound("get %s: no such volume" % name)
        return vol

    def list(self) -> List[Volume]:
        out = []
        for name in sorted(os.listdir(self.root)):
            vol = self._load(name)
            if vol is not None:
                out.append(vol)
        return out

    def remove(self, name: str, force: bool = False) -> None:
        users = self.users(name)  # before our lock: the container manager may hold its own and call us
        with self._lock:
            vol = self._load(name)
            if vol is None:
                if force:
                    return
                raise NotFound("get %s: no such volume" % name)
            if users:
                raise Conflict("remove %s: volume is in use - [%s]" % (name, ", ".join(users)))
            trash = os.path.join(self.root, ".rm-%s" % uuid.uuid4().hex[:12])
            os.rename(vol.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def prune(
        self, include_named: bool = False, label_filter: Callable[[dict], bool] | None = None
    ) -> tuple[List[str], int]:
        """Remove unused volumes (only anonymous ones unless include_named); -> (names, bytes)."""
        deleted, reclaimed = [], 0
        for vol in self.list():
            if not include_named and not vol.anonymous:
                continue
            if label_filter is not None and not label_filter(vol.labels):
                continue
            if self.users(vol.name):
                continue
            size = vol.disk_usage()
            try:
                self.remove(vol.name)
            except (Conflict, NotFound):
                continue
            deleted.append(vol.name)
            reclaimed += size
        return deleted, reclaimed
