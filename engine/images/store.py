"""The image store: configs (byte for byte, ID = sha256 of the config), tags/digests, rmi, prune.

data-root/image/configs/<hex>.json   the image config exactly as received
data-root/image/meta/<hex>.json      engine-side metadata (LastTagTime, when it arrived)
data-root/image/repositories.json    {"tags": {"name:tag": "sha256:<id>"}, "digests": {"name@sha256:..": id}}
Layers live in layers.py's LayerStore; container roots in overlay.py.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import os
import re
import threading
from typing import Callable, Iterable, List  # List: the class has a method named list

from dockyard.engine.atomicfile import atomic_write, atomic_write_json
from dockyard.engine.errors import Conflict, InvalidParameter, NotFound
from dockyard.engine.images import digest, reference
from dockyard.engine.images.layers import LayerStore, read_json
from dockyard.engine.images.storagedriver import rootfs_manager
from dockyard.engine.timefmt import rfc3339nano

log = logging.getLogger("dockyard.engine.images")

_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")
ZERO_TIME = "0001-01-01T00:00:00Z"


def parse_time(text):
    """RFC 3339 (with nanoseconds) -> float unix time; 0.0 when missing or malformed."""
    m = _RFC3339.match(text or "")
    if not m:
        return 0.0
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    ts = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if m.group(7):
        ts += float("0" + m.group(7))
    tz = m.group(8)
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        ts -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return ts


def config_diff_ids(config: object) -> List[str]:
    """rootfs.diff_ids of a parsed image config, each checked to be a sha256 digest (InvalidParameter)."""
    if not isinstance(config, dict):
        raise InvalidParameter("invalid image config: not a JSON object")
    rootfs = config.get("rootfs") or {}
    if not isinstance(rootfs, dict):
        raise InvalidParameter("invalid image config: rootfs is not an object")
    if rootfs.get("type", "layers") != "layers":
        raise InvalidParameter("invalid image config: rootfs type %r" % rootfs.get("type"))
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list):
        raise InvalidParameter("invalid image config: rootfs.diff_ids is not a list")
    return [digest.check(d, "diff ID") for d in diff_ids]


class Image:
    """One image: its config and where its layers are."""

    def __init__(self, store, image_id, raw_config, config):
        self.store = store
        self.id = image_id
        self.raw_config = raw_config
        self.config = config

    @property
    def hex(self):
        return self.id.split(":", 1)[1]

    @property
    def short_id(self):
        return self.hex[:12]

    @property
    def diff_ids(self):
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def container_config(self):
        """The `config` section (Env, Cmd, Entrypoint, WorkingDir, User, ...); {} if absent."""
        return self.config.get("config") or {}

    @property
    def created(self):
        """Unix time (float) from the config's `created`."""
        return parse_time(self.config.get("created"))

    @property
    def created_text(self):
        return self.config.get("created") or ZERO_TIME

    @property
    def repo_tags(self):
        return self.store.tags_of(self.id)

    @property
    def repo_digests(self):
        return self.store.digests_of(self.id)

    @property
    def labels(self):
        return self.container_config.get("Labels") or {}

    def layers(self):
        return [self.store.layers.get(d) for d in self.diff_ids]

    def layer_dirs(self):
        """Extracted layer dirs, LOWEST first."""
        return [layer.diff_dir for layer in self.layers()]

    @property
    def size(self):
        total = 0
        for d in self.diff_ids:
            if not digest.is_sha256(d):
                continue  # a config stored before digests were checked; mounting it is refused
            try:
                total += self.store.layers.get(d).size
            except NotFound:
                pass
        return total

    @property
    def meta(self):
        return read_json(os.path.join(self.store.meta_dir, self.hex + ".json"), {}) or {}


class ImageStore:
    """Everything about images on this engine (req.engine.images): configs, tags, layers, overlay roots."""

    def __init__(
        self, data_root: str, shift: Callable[[int, int], tuple[int, int]] | None = None, driver: str = "overlay2"
    ) -> None:
        """shift: user namespace remapping (layers are extracted with owners shifted into the range).
        driver: the storage driver of container roots (images.storagedriver)."""
        self.data_root = data_root
        self.root = os.path.join(data_root, "image")
        self.config_dir = os.path.join(self.root, "configs")
        self.meta_dir = os.path.join(self.root, "meta")
        for d in (self.root, self.config_dir, self.meta_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self.repos_path = os.path.join(self.root, "repositories.json")
        self.layers = LayerStore(self.root, shift)
        self.rootfs = rootfs_manager(driver, data_root, self.layers, shift(0, 0) if shift else None)
        self._lock = threading.RLock()
        self._cache: dict[str, Image] = {}
        self._usage_check: Callable[[str], List[str]] | None = None
        self._running_check: Callable[[str], bool] | None = None
        self._repos = read_json(self.repos_path, None) or {"tags": {}, "digests": {}}
        self._repos.setdefault("tags", {})
        self._repos.setdefault("digests", {})

    # -- hooks -----------------------------------------------------------------------
    def set_usage_check(self, fn: Callable[[str], List[str]]) -> None:
        """fn(image_id) -> list of container IDs using the image (rmi answers 409 unless forced)."""
        self._usage_check = fn

    def set_running_check(self, fn: Callable[[str], bool]) -> None:
        """fn(container_id) -> True if running (rmi -f still refuses images of running containers)."""
        self._running_check = fn

    def users(self, image_id: str) -> List[str]:
        if self._usage_check is None:
            return []
        try:
            return list(self._usage_check(image_id) or [])
        except Exception:
            log.exception("image usage check failed")
            return []

    def _running(self, container_id):
        if self._running_check is None:
            return False
        try:
            return bool(self._running_check(container_id))
        except Exception:
            return False

    # -- rootfs (the interface the runtime uses) -------------------------------------------
    def mount_rootfs(self, container_id: str, image: Image) -> str:
        return self.rootfs.mount(container_id, image.diff_ids)

    def unmount_rootfs(self, container_id: str) -> None:
        self.rootfs.unmount(container_id)

    def remove_rootfs(self, container_id: str) -> None:
        self.rootfs.remove(container_id)

    # -- reading ------------------------------------------------------------------------
    def _save_repos(self):
        atomic_write_json(self.repos_path, self._repos, durable=True)

    def ids(self) -> List[str]:
        out = []
        for name in os.listdir(self.config_dir):
            if name.endswith(".json") and digest.is_sha256("sha256:" + name[:-5]):
                out.append("sha256:" + name[:-5])
        return out

    def by_id(self, image_id: str) -> Image:
        img = self._cache.get(image_id)
        if img is not None:
            return img
        hexid = digest.hex_of(image_id, "image ID")
        try:
            with open(os.path.join(self.config_dir, hexid + ".json"), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise NotFound("No such image: %s" % image_id) from None
        img = Image(self, "sha256:" + hexid, raw, json.loads(raw.decode("utf-8")))
        self._cache[img.id] = img
        return img

    def exists(self, image_id: str) -> bool:
        return os.path.exists(os.path.join(self.config_dir, digest.hex_of(image_id, "image ID") + ".json"))

    def list(self) -> List[Image]:
        out = []
        for image_id in self.ids():
            try:
                out.append(self.by_id(image_id))
            except (NotFound, ValueError):
                continue
        return out

    def _by_prefix(self, prefix):
        matches = [i for i in self.ids() if i[7:].startswith(prefix)]
        if len(matches) == 1:
            return self.by_id(matches[0])
        return None

    def get(self, ref: str) -> Image:
        """name[:tag], name@digest, full or short ID, 'sha256:...' -> Image; NotFound otherwise."""
        ref = ref or ""
        if ref.startswith("sha256:"):
            hexpart = ref[7:]
            if reference.HEX_PREFIX.match(hexpart):
                img = self._by_prefix(hexpart)
                if img is not None:
                    return img
            else:
                reference.parse(ref)  # 400 for what is neither an ID nor a name ("sha256:../x"), as moby
            raise NotFound("No such image: %s" % ref)
        parsed = None
        try:
            parsed = reference.parse(ref, default_tag=True)
        except InvalidParameter:
            pass
        if parsed is not None:
            with self._lock:
                if parsed.digest:
                    target = self._repos["digests"].get("%s@%s" % (parsed.repo, parsed.digest))
                else:
                    target = self._repos["tags"].get(parsed.tagged)
            if target and self.exists(target):
                return self.by_id(target)
        if reference.HEX_PREFIX.match(ref):
            img = self._by_prefix(ref)
            if img is not None:
                return img
        raise NotFound("No such image: %s" % (parsed if parsed is not None else ref))

    def tags_of(self, image_id: str) -> List[str]:
        with self._lock:
            return sorted(t for t, i in self._repos["tags"].items() if i == image_id)

    def digests_of(self, image_id: str) -> List[str]:
        with self._lock:
            return sorted(d for d, i in self._repos["digests"].items() if i == image_id)

    def all_tags(self) -> dict[str, str]:
        with self._lock:
            return dict(self._repos["tags"])

    # -- writing ----------------------------------------------------------------------
    def add_config(self, raw_config: bytes) -> Image:
        """Store an image config whose layers are all present; returns the Image."""
        try:
            config = json.loads(raw_config.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidParameter("invalid image config: %s" % exc) from None
        if not isinstance(config, dict):
            raise InvalidParameter("invalid image config: not a JSON object")
        diff_ids = config_diff_ids(config)
        for diff_id in diff_ids:
            if not self.layers.exists(diff_id):
                raise InvalidParameter("image config references missing layer %s" % diff_id)
        image_id = "sha256:" + hashlib.sha256(raw_config).hexdigest()
        path = os.path.join(self.config_dir, image_id[7:] + ".json")
        with self._lock:
            if not os.path.exists(path):
                atomic_write(path, raw_config, durable=True)
                self._write_meta(image_id, {"Loaded": rfc3339nano()})
        return self.by_id(image_id)

    def _write_meta(self, image_id, updates):
        path = os.path.join(self.meta_dir, image_id[7:] + ".json")
        meta = read_json(path, {}) or {}
        meta.update(updates)
        atomic_write_json(path, meta, durable=True)

    def tag(self, image_id: str, ref: str | reference.Reference) -> str | None:
        """Point 'repo:tag' at the image; returns the ID the tag had before (or None)."""
        parsed = reference.parse(ref, default_tag=True) if isinstance(ref, str) else ref
        if parsed.digest and not parsed.tag:
            raise InvalidParameter("refusing to create a tag with a digest reference")
        reference.check_repo_name(parsed.repo)
        key = "%s:%s" % (parsed.repo, parsed.tag or reference.DEFAULT_TAG)
        with self._lock:
            old = self._repos["tags"].get(key)
            if old != image_id:  # as moby's reference store: the same tag again writes nothing (a cached rebuild)
                self._repos["tags"][key] = image_id
                self._save_repos()
            self._write_meta(image_id, {"LastTagTime": rfc3339nano()})
        return old if old != image_id else None

    def add_digest(self, image_id: str, repo: str, manifest_digest: str) -> None:
        digest.check(manifest_digest, "manifest digest")
        with self._lock:
            self._repos["digests"]["%s@%s" % (repo, manifest_digest)] = image_id
            self._save_repos()

    def untag(self, name: str) -> bool:
        """Remove one reference ('repo:tag' or 'repo@digest'); True if it existed."""
        with self._lock:
            table = "digests" if "@" in name else "tags"
            if self._repos[table].pop(name, None) is None:
                return False
            self._save_repos()
            return True

    def references(self, image_id: str) -> List[str]:
        return self.tags_of(image_id) + self.digests_of(image_id)

    # -- parents: the chain of images a build commits, one per step ---------------------------------
    def set_parent(self, image_id: str, parent_id: str) -> None:
        """Record that image_id was made from parent_id (moby's parent link).

        Untagged images with children are build steps: `docker images` shows them only with -a,
        image prune leaves them to their child, rmi of the child removes them.
        """
        digest.check(image_id, "image ID")
        digest.check(parent_id, "image ID")
        with self._lock:
            self._write_meta(image_id, {"Parent": parent_id})

    def parent_of(self, image_id: str) -> str | None:
        parent = self.by_id(image_id).meta.get("Parent")
        return parent if digest.is_sha256(parent) and self.exists(parent) else None

    def parents(self) -> set[str]:
        """IDs of the images that other images were made from."""
        out = set()
        for img in self.list():
            parent = img.meta.get("Parent")
            if digest.is_sha256(parent):
                out.add(parent)
        return out

    def _remove_parents(self, parent, stats):
        """After rmi: remove the untagged parents no other image and no container uses (moby's prune)."""
        records = []
        while parent and digest.is_sha256(parent) and self.exists(parent):
            users = self.users(parent)  # asked before our lock, as in delete()
            with self._lock:
                img = self.by_id(parent)
                if users or self.references(img.id) or img.id in self.parents():
                    break
                parent = img.meta.get("Parent")
                freed = self._remove_image(img)
            if stats is not None:
                stats["reclaimed"] = stats.get("reclaimed", 0) + freed
            records.append({"Deleted": img.id})
        return records

    # -- removal ------------------------------------------------------------------------
    def delete(
        self, ref: str, force: bool = False, prune: bool = True, stats: dict[str, int] | None = None
    ) -> List[dict[str, str]]:
        """`docker rmi`: moby's untag-vs-delete rules; returns [{"Untagged"}|{"Deleted"}].

        stats (a dict), if given, gets "reclaimed": bytes of layers actually removed.
        """
        img = self.get(ref)
        records = []
        # Asked before taking our lock: the container manager may hold its own lock and call us.
        users = self.users(img.id)
        running = [c for c in users if self._running(c)]
        is_id = ref.startswith("sha256:") or (reference.HEX_PREFIX.match(ref) and img.hex.startswith(ref))
        with self._lock:
            refs = self.references(img.id)
            if not is_id:
                parsed = reference.parse(ref, default_tag=True)
                name = str(parsed) if parsed.digest else parsed.tagged
                if not force and len(refs) == 1 and users:
                    raise Conflict(
                        'conflict: unable to remove repository reference "%s" (must force) - '
                        "container %s is using its referenced image %s" % (ref, users[0][:12], img.short_id)
                    )
                self.untag(name)
                records.append({"Untagged": name})
                remaining = self.references(img.id)
                # Removing the last tag of a repository also drops that repository's digests (moby).
                if not parsed.digest:
                    repo_tags = [r for r in remaining if "@" not in r and r.rsplit(":", 1)[0] == parsed.repo]
                    if not repo_tags:
                        for dig in [r for r in remaining if r.startswith(parsed.repo + "@")]:
                            self.untag(dig)
                            records.append({"Untagged": dig})
                        remaining = self.references(img.id)
                if remaining:
                    return records
                quiet = True
            else:
                tags = [r for r in refs if "@" not in r]
                repos = {r.split("@")[0] if "@" in r else r.rsplit(":", 1)[0] for r in refs}
                if not force and (len(tags) > 1 or len(repos) > 1):
                    raise Conflict(
                        "conflict: unable to delete %s (must be forced) - image is referenced "
                        "in multiple repositories" % img.short_id
                    )
                quiet = False
            conflict = None
            if running:
                conflict = (
                    "conflict: unable to delete %s (cannot be forced) - image is being used by "
                    "running container %s" % (img.short_id, running[0][:12])
                )
            elif users and not force:
                conflict = (
                    "conflict: unable to delete %s (must be forced) - image is being used by "
                    "stopped container %s" % (img.short_id, users[0][:12])
                )
            if conflict is None and img.id in self.parents():
                if quiet:
                    return records  # an untagged build step of another image stays for it
                conflict = "conflict: unable to delete %s (cannot be forced) - image has dependent child images" % (
                    img.short_id
                )
            if conflict:
                if quiet:
                    return records  # the image stays, now untagged, for its containers
                raise Conflict(conflict)
            if is_id:
                for r in self.references(img.id):
                    self.untag(r)
                    records.append({"Untagged": r})
            parent = img.meta.get("Parent")
            freed = self._remove_image(img)
            if stats is not None:
                stats["reclaimed"] = stats.get("reclaimed", 0) + freed
            records.append({"Deleted": img.id})
        if prune and parent:
            records.extend(self._remove_parents(parent, stats))
        return records

    def _remove_image(self, img):
        for path in (os.path.join(self.config_dir, img.hex + ".json"), os.path.join(self.meta_dir, img.hex + ".json")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._cache.pop(img.id, None)
        stats = {}
        self.gc_layers(candidates=img.diff_ids, stats=stats)
        return stats.get("reclaimed", 0)

    def gc_layers(self, candidates: Iterable[str] | None = None, stats: dict[str, int] | None = None) -> List[str]:
        """Remove layers that no image and no container rootfs uses; returns removed diff IDs."""
        with self._lock:
            used = set(self.rootfs.layers_in_use())
            for other in self.list():
                used.update(other.diff_ids)
            pool = candidates if candidates is not None else self.layers.list_ids()
            removed = []
            for diff_id in pool:
                if not digest.is_sha256(diff_id):
                    continue  # never a path: a crafted config can name no layer to delete
                if diff_id not in used and self.layers.exists(diff_id):
                    size = self.layers.get(diff_id).size
                    if self.layers.remove(diff_id):
                        removed.append(diff_id)
                        if stats is not None:
                            stats["reclaimed"] = stats.get("reclaimed", 0) + size
            return removed

    def is_dangling(self, img: Image) -> bool:
        return not self.references(img.id)

    def prune(
        self, dangling_only: bool = True, until: float | None = None, label_filter: Callable[[dict], bool] | None = None
    ) -> tuple[List[dict[str, str]], int]:
        """`docker image prune [-a]`: images no container uses (untagged ones unless -a)."""
        deleted: List[dict[str, str]] = []
        reclaimed = 0
        progress = True
        while progress:  # with -a, a parent refused while its child was there goes in the next pass
            progress = False
            parents = self.parents()
            for img in self.list():
                if dangling_only and (not self.is_dangling(img) or img.id in parents):
                    continue  # untagged images with children are build steps: they go with their child
                if not self.exists(img.id):
                    continue  # removed meanwhile as the parent of an image deleted before it
                if until is not None and img.created >= until:
                    continue
                if label_filter is not None and not label_filter(img.labels):
                    continue
                if self.users(img.id):
                    continue
                if img.id in parents:
                    continue  # a parent goes after its children (delete would refuse it now)
                stats: dict[str, int] = {}
                try:
                    records = self.delete(img.id, force=True, stats=stats)
                except (Conflict, NotFound):
                    continue
                deleted.extend(records)
                reclaimed += stats.get("reclaimed", 0)
                progress = True
        return deleted, reclaimed
