"""Container root filesystems: overlayfs of an image's layers plus a per-container upper dir.

data-root/overlay/<container-id>/{upper,work,merged,layers.json}. The mount is
made in the engine's (the host's) mount namespace, so the engine can reach a
stopped container's files (docker cp); containers get a copy in their own
namespace. layers.json lists the diff IDs in use, so image removal never deletes
a layer a container still stands on.

The kernel copies mount options into one page (4096 bytes). Lower dirs are
therefore named by short links (data-root/image/l/<20 chars> -> ../layers/<hex>/diff,
as docker's overlay2 does); if even that is too long, the mount is made from a
forked child whose working directory is data-root/image, with relative paths.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.errors import SystemFailure
from dockyard.engine.images import digest
from dockyard.engine.images.layers import LayerStore, read_json

log = logging.getLogger("dockyard.engine.images")

MNT_DETACH = 2
# The engine's own view of image content never honours device nodes or setuid bits (an image's node
# must not open a host device for the engine, e.g. during volume copy-up); a container's root is a
# bind of this mount with its own flags (runtime.mountns).
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MERGED_FLAGS = MS_NODEV | MS_NOSUID
MAX_MOUNT_DATA = 4000  # a page minus headroom
OVERLAYFS_SUPER_MAGIC = 0x794C7630

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
        _libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
    return _libc


def mount(source, target, fstype, flags=0, data=None):
    rc = libc().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data is not None else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def umount(target, flags=0):
    rc = libc().umount2(target.encode(), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def filesystem_of(path):
    """(fstype, mountpoint) of the mount holding `path`, from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    best = ("", "")
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                mnt = fields[4].replace("\\040", " ")
                sep = fields.index("-")
                fstype = fields[sep + 1]
                if path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/":
                    if len(mnt) >= len(best[1]):
                        best = (fstype, mnt)
    except OSError:
        pass
    return best


def overlay_works_in(directory: str) -> str | None:
    """Try a tiny overlay mount in `directory` (which must exist); -> None if it works, else why not."""
    probe = os.path.join(directory, "overlay-probe-%d" % os.getpid())
    parts = {name: os.path.join(probe, name) for name in ("lower", "upper", "work", "merged")}
    try:
        for path in parts.values():
            os.makedirs(path, mode=0o700, exist_ok=True)
        data = "lowerdir=%s,upperdir=%s,workdir=%s" % (parts["lower"], parts["upper"], parts["work"])
        try:
            mount("overlay", parts["merged"], "overlay", MERGED_FLAGS, data)
        except OSError as exc:
            return exc.strerror or str(exc)
        try:
            # Creating a file is what needs the upper dir's filesystem to support overlayfs.
            with open(os.path.join(parts["merged"], "probe"), "w") as fh:
                fh.write("probe")
        except OSError as exc:
            return exc.strerror or str(exc)
        finally:
            umount(parts["merged"], MNT_DETACH)
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _mount_in_child(cwd, data, target, flags=MERGED_FLAGS):
    """mount(2) from a forked child that chdir'ed to `cwd` (relative lowerdirs; threads unaffected)."""
    lib = libc()
    pid = os.fork()
    if pid == 0:  # child: no Python-level locking from here on
        code = 1
        try:
            os.chdir(cwd)
            rc = lib.mount(b"overlay", target.encode(), b"overlay", flags, data.encode())
            code = 0 if rc == 0 else (ctypes.get_errno() or 1)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
    if code != 0:
        raise OSError(code, os.strerror(code) if code > 0 else "mount helper died", target)


class RootfsManager:
    """Mounts, unmounts and removes per-container overlay roots (the "overlay2" storage driver)."""

    driver = "overlay2"

    def __init__(self, data_root: str, layer_store: LayerStore, root_owner: tuple[int, int] | None = None) -> None:
        """root_owner: with user namespace remapping, the host uid/gid of the containers' root, which
        owns each upper dir (the merged root takes its owner from there)."""
        self.data_root = data_root
        self.root_owner = root_owner
        # Remapped, an image's setuid-root files belong to an unprivileged host uid and setuid works in
        # the container as in Docker; the mount stays nodev (nosuid would be locked in the user namespace).
        self.merged_flags = MERGED_FLAGS if root_owner is None else MERGED_FLAGS & ~MS_NOSUID
        self.root = os.path.join(data_root, "overlay")
        self.image_root = os.path.join(data_root, "image")
        self.layers = layer_store
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.empty = os.path.join(self.image_root, "empty")
        os.makedirs(self.empty, mode=0o755, exist_ok=True)

    def paths(self, container_id: str) -> dict[str, str]:
        base = os.path.join(self.root, container_id)
        return {
            "dir": base,
            "upper": os.path.join(base, "upper"),
            "work": os.path.join(base, "work"),
            "merged": os.path.join(base, "merged"),
        }

    def upper_dir(self, container_id: str) -> str:
        """The container's changes (docker diff, commit, build steps): its overlay upper dir."""
        return self.paths(container_id)["upper"]

    def graph_driver_data(self, container_id: str, diff_ids: list[str]) -> dict[str, str]:
        """GraphDriver.Data for container inspect (LowerDir/UpperDir/MergedDir/WorkDir)."""
        p = self.paths(container_id)
        lowers = [self.layers.get(d).diff_dir for d in reversed(diff_ids)]
        return {"LowerDir": ":".join(lowers), "UpperDir": p["upper"], "MergedDir": p["merged"], "WorkDir": p["work"]}

    def mount(self, container_id: str, diff_ids: list[str]) -> str:
        """Mount (idempotently) the rootfs of a container; diff_ids LOWEST first. -> merged path."""
        if not container_id or "/" in container_id or container_id.startswith("."):
            raise ValueError("bad container id %r" % container_id)
        for diff_id in diff_ids:
            digest.check(diff_id, "diff ID")  # a digest is a path component: checked before anything is made
        p = self.paths(container_id)
        for key in ("dir", "upper", "work", "merged"):
            os.makedirs(p[key], mode=0o755 if key != "dir" else 0o700, exist_ok=True)
        if self.root_owner is not None:
            os.chown(p["upper"], *self.root_owner)
        record = os.path.join(p["dir"], "layers.json")
        if read_json(record) is None:
            atomic_write_json(record, {"layers": list(diff_ids)}, durable=True)
        else:
            diff_ids = read_json(record)["layers"]
        if os.path.ismount(p["merged"]):
            # Mounted by an engine before nodev,nosuid: add them (a bind remount changes this mount only).
            try:
                mount("none", p["merged"], None, MS_REMOUNT | MS_BIND | self.merged_flags)
            except OSError as exc:
                log.warning("cannot make %s nodev,nosuid: %s", p["merged"], exc.strerror)
            return p["merged"]
        # Top first, as overlayfs wants. A layer that comes twice (two build steps with the same diff,
        # an image with repeated empty layers) is mounted once, at its topmost place: overlayfs refuses
        # the same lower dir twice (ELOOP), and the lower copy adds nothing the upper one does not.
        top_first: list[str] = []
        for d in reversed(diff_ids):
            if d not in top_first:
                top_first.append(d)
        layers = [self.layers.get(d) for d in top_first]
        links = [l.link for l in layers]
        if not links:
            absolute, relative = [self.empty], ["empty"]
        else:
            absolute = [os.path.join(self.image_root, "l", link) for link in links]
            relative = ["l/" + link for link in links]
        tail = ",upperdir=%s,workdir=%s" % (p["upper"], p["work"])
        data = "lowerdir=" + ":".join(absolute) + tail
        try:
            if len(data) <= MAX_MOUNT_DATA:
                mount("overlay", p["merged"], "overlay", self.merged_flags, data)
            else:
                data = "lowerdir=" + ":".join(relative) + tail
                if len(data) > MAX_MOUNT_DATA:
                    raise SystemFailure("image has too many layers (%d) to mount" % len(links))
                _mount_in_child(self.image_root, data, p["merged"], self.merged_flags)
        except OSError as exc:
            fstype, mnt = filesystem_of(self.data_root)
            hint = ""
            if fstype in ("overlay", "aufs"):
                hint = (
                    " (data-root %s is on %s at %s, which cannot hold an overlay upper dir: "
                    "put --data-root on ext4, xfs, btrfs or tmpfs)" % (self.data_root, fstype, mnt)
                )
            raise SystemFailure(
                "error mounting the container's root filesystem: %s%s" % (exc.strerror or exc, hint)
            ) from None
        return p["merged"]

    def remount(self, container_id: str) -> str:
        """Mount again from the recorded layers (after an engine/host restart)."""
        p = self.paths(container_id)
        rec = read_json(os.path.join(p["dir"], "layers.json"))
        if rec is None:
            raise SystemFailure("container %s has no root filesystem record" % container_id)
        return self.mount(container_id, rec["layers"])

    def is_mounted(self, container_id: str) -> bool:
        return os.path.ismount(self.paths(container_id)["merged"])

    def unmount(self, container_id: str) -> None:
        merged = self.paths(container_id)["merged"]
        for _ in range(8):  # stacked mounts (mounted twice) come off one at a time
            try:
                umount(merged, MNT_DETACH)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOENT):
                    return
                raise SystemFailure("cannot unmount %s: %s" % (merged, exc.strerror))

    def remove(self, container_id: str) -> None:
        self.unmount(container_id)
        shutil.rmtree(self.paths(container_id)["dir"], ignore_errors=True)

    def layers_in_use(self) -> set[str]:
        """Diff IDs used by any container's rootfs (mounted or not)."""
        return layers_recorded_under(self.root)


def layers_recorded_under(root: str) -> set[str]:
    """Diff IDs named by the layers.json of every container directory under `root` (either storage driver)."""
    used: set[str] = set()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return used
    for name in names:
        rec = read_json(os.path.join(root, name, "layers.json"))
        if rec:
            used.update(rec.get("layers", ()))
    return used
