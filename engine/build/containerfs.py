"""A container's filesystem seen from outside: `docker commit`, `docker diff` and `docker export`.

Commit turns the container's overlay upper dir into a layer (build/layerdiff.py, as a build step does)
and records an image whose config is the container's, merged with the request's config and the
`--change` lines. Diff lists the upper dir against the image's layers. Export writes the merged root as
one tar. The container may be running and hostile: every walk opens directories relative to their
parent's descriptor with O_NOFOLLOW, so a path swapped for a symlink mid-walk is never followed out of
the root, and no other filesystem (a mount inside the root) is entered.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import tarfile
import tempfile
from typing import Any, BinaryIO, Callable, Dict, List, Optional

from dockyard.engine import hostinfo
from dockyard.engine.build import layerdiff
from dockyard.engine.errors import Conflict, EngineError, InvalidParameter
from dockyard.engine.images import reference
from dockyard.engine.images.importer import apply_changes
from dockyard.engine.images.store import Image, ImageStore
from dockyard.engine.runtime.manager import ContainerManager
from dockyard.engine.runtime.store import Container
from dockyard.engine.timefmt import rfc3339nano

CHANGE_MODIFIED, CHANGE_ADDED, CHANGE_DELETED = 0, 1, 2
_RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
_RUNTIME_DIRS = ("/proc", "/sys", "/dev")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _walk(root: str, visit: Callable[[str, os.stat_result, int, str], bool]) -> None:
    """Depth-first over the tree under root, in name order, through directory descriptors.

    visit(path "/a/b", lstat, parent dir fd, name) -> True to descend into a directory.
    """
    top = os.open(root, _DIR_FLAGS)
    dev = os.fstat(top).st_dev
    stack = [("", top)]
    try:
        while stack:
            rel, fd = stack.pop()
            try:
                names = sorted(os.listdir(fd))
                children = []
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    path = rel + "/" + name
                    if visit(path, st, fd, name) and stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                        try:
                            children.append((path, os.open(name, _DIR_FLAGS, dir_fd=fd)))
                        except OSError:
                            continue  # swapped for a link or gone: not followed
            finally:
                os.close(fd)
            stack.extend(reversed(children))
    finally:
        for _, fd in stack:
            os.close(fd)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _in_lower(layer_dirs: List[str], path: str) -> bool:
    """Does `path` exist in the image (top layer first)? Never follows a link in a layer."""
    parts = [p for p in path.split("/") if p]
    for diff in layer_dirs:
        cur = diff
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            try:
                st = os.lstat(cur)
            except OSError:
                break
            if _is_whiteout(st):
                return False
            if i == len(parts) - 1:
                return True
            if not stat.S_ISDIR(st.st_mode):
                break
    return False


def _runtime_only(path: str, st: os.stat_result) -> bool:
    """Mount points the runtime makes in every container: not the container's own changes."""
    if path in _RUNTIME_FILES:
        return stat.S_ISREG(st.st_mode) and st.st_size == 0
    return path in _RUNTIME_DIRS and stat.S_ISDIR(st.st_mode)


def changes(images: ImageStore, c: Container) -> List[Dict[str, Any]]:
    """`docker diff`: [{"Path", "Kind"}] of the upper dir, whiteouts as deletions, sorted by path."""
    upper = images.rootfs.upper_dir(c.id)
    if not os.path.isdir(upper):
        return []
    img = images.by_id(c.image_id)
    lowers = list(reversed(img.layer_dirs()))
    out: List[Dict[str, Any]] = []

    def visit(path, st, fd, name):
        if _is_whiteout(st):
            out.append({"Path": path, "Kind": CHANGE_DELETED})
            return False
        if path in _RUNTIME_DIRS and stat.S_ISDIR(st.st_mode):
            return False  # /proc, /sys, /dev: mount points, their content is never the container's
        if _runtime_only(path, st):
            return False
        if path == "/etc" and stat.S_ISDIR(st.st_mode) and _etc_holds_only_mount_points(fd):
            return False
        kind = CHANGE_MODIFIED if _in_lower(lowers, path) else CHANGE_ADDED
        out.append({"Path": path, "Kind": kind})
        return True

    _walk(upper, visit)
    out.sort(key=lambda ch: ch["Path"])
    return out


def _etc_holds_only_mount_points(parent_fd: int) -> bool:
    try:
        fd = os.open("etc", _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        for name in os.listdir(fd):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not _runtime_only("/etc/" + name, st):
                return False
        return True
    finally:
        os.close(fd)


def export(images: ImageStore, c: Container, out: BinaryIO) -> None:
    """`docker export`: the container's merged root as one tar (ids as the container sees them)."""
    root = images.rootfs.paths(c.id)["merged"]
    if not images.rootfs.is_mounted(c.id):
        raise Conflict("container %s has no mounted root filesystem to export" % c.id[:12])
    shift = images.layers.shift
    unshift = layerdiff.unshifter(shift) if shift is not None else None
    inodes: Dict[tuple, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:

        def visit(path, st, fd, name):
            ti = tarfile.TarInfo(path.lstrip("/"))
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid, ti.gid = unshift(st.st_uid, st.st_gid) if unshift else (st.st_uid, st.st_gid)
            ti.mtime = int(st.st_mtime)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
                return True
            if stat.S_ISLNK(mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(name, dir_fd=fd)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in inodes:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = inodes[key]
                else:
                    try:
                        ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
                    except OSError:
                        return False
                    with os.fdopen(ffd, "rb") as fh:
                        now = os.fstat(fh.fileno())
                        if not stat.S_ISREG(now.st_mode):
                            return False
                        inodes[key] = ti.name
                        ti.size = now.st_size
                        tar.addfile(ti, _Exactly(fh, now.st_size))
                    return False
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(mode):
                ti.type = tarfile.FIFOTYPE
            else:
                return False  # sockets are not exported (as Docker)
            tar.addfile(ti)
            return False

        _walk(root, visit)


class _Exactly:
    """A file read as exactly `size` bytes: a file growing or shrinking while it is read keeps the tar sound."""

    def __init__(self, fh, size: int) -> None:
        self.fh = fh
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n)
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


def _merge_config(base: Dict[str, Any], user: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """moby's merge: what the request's config sets wins, empty fields keep the container's."""
    merged = copy.deepcopy(base)
    for key, value in (user or {}).items():
        if value not in (None, "", [], {}, False, 0):
            merged[key] = copy.deepcopy(value)
    user_env = (user or {}).get("Env")
    if isinstance(user_env, list) and user_env:  # Env is merged by name: the container's others stay
        names = {str(e).split("=", 1)[0] for e in user_env}
        merged["Env"] = list(user_env) + [e for e in base.get("Env") or [] if str(e).split("=", 1)[0] not in names]
    return merged


def commit(
    images: ImageStore,
    containers: ContainerManager,
    c: Container,
    repo: Optional[str] = None,
    tag: Optional[str] = None,
    comment: str = "",
    author: str = "",
    pause: bool = True,
    changes_lines: Optional[List[str]] = None,
    config: Optional[Dict[str, Any]] = None,
) -> Image:
    """`docker commit`: the container's changes as a new layer on its image; -> the new Image."""
    target = None
    if repo:
        target = reference.parse(repo if not tag else "%s:%s" % (repo, tag))
        if target.digest:
            raise InvalidParameter("cannot commit to digest reference")
    elif tag:
        raise InvalidParameter("tag is specified without repository")
    new_config = _merge_config(c.config, config)
    new_config.pop("Image", None)
    new_config = apply_changes(new_config, changes_lines or [])  # 400 on a bad line, before anything runs
    base = images.by_id(c.image_id)
    paused_here = False
    if pause and c.running and not c.state.get("Paused"):
        containers.pause(c)
        paused_here = True
    try:
        upper = images.rootfs.upper_dir(c.id)
        shift = images.layers.shift
        unshift = layerdiff.unshifter(shift) if shift is not None else None
        fd, path = tempfile.mkstemp(prefix="commit-", suffix=".tar", dir=images.layers.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                layerdiff.write_diff(upper, out, unshift)
            with open(path, "rb") as fh:
                diff_id = images.layers.ingest(fh).diff_id
        finally:
            os.unlink(path)
    finally:
        if paused_here:
            try:
                containers.unpause(c)
            except EngineError:
                pass  # it stopped meanwhile
    full = base.config if isinstance(base.config, dict) else {}
    now = rfc3339nano()
    history = copy.deepcopy(full.get("history") or [])
    entry: Dict[str, Any] = {"created": now, "created_by": " ".join(_command(c))}
    if author:
        entry["author"] = author
    if comment:
        entry["comment"] = comment
    history.append(entry)
    image_config = {
        "architecture": full.get("architecture") or hostinfo.go_arch(),
        "os": full.get("os") or "linux",
        "author": author,
        "comment": comment,
        "config": new_config,
        "container": c.id,
        "created": now,
        "docker_version": full.get("docker_version", ""),
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": list(base.diff_ids) + [diff_id]},
    }
    if not author:
        image_config.pop("author")
    raw = json.dumps(image_config, separators=(",", ":"), sort_keys=True).encode("utf-8")
    try:
        img = images.add_config(raw)
    except BaseException:
        images.gc_layers(candidates=[diff_id])
        raise
    images.set_parent(img.id, base.id)
    if target is not None:
        images.tag(img.id, target)
    return img


def _command(c: Container) -> List[str]:
    cfg = c.config
    return list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
