"""Container root filesystems without overlayfs: the "vfs" storage driver (a full copy per container).

Used, as Docker does, where the data-root cannot hold overlay upper/work dirs (the data-root is itself on
overlayfs: containers in containers, some CI runners), or when chosen with --storage-driver vfs.

data-root/vfs/<container-id>/{rootfs,layers.json}. The copy is made once, at create: every layer's tar
(Layer.open_tar, the same bytes the layer store extracted) is extracted into the rootfs in order, lowest
first, with whiteouts applied, by tarsafe.safe_extract -- the same confined extraction as a pull, so a link
from a lower layer never leads a higher layer's write out of the rootfs. A rootfs is only used once it is
complete (it is built in a temporary dir and renamed into place). As overlay2's merged dir, the engine's
view of it is a bind mount of itself with nodev,nosuid (MERGED_FLAGS): an image's device node or setuid file
never works for the engine (docker cp, volume copy-up); a container's root is a bind of that with its own
flags (runtime.mountns).

There is no upper dir: `docker diff`, commit and build steps need one and are refused on this driver
(UPPER_DIR_MISSING says why) rather than answering an empty change set.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from typing import Callable

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.errors import SystemFailure, Unsupported
from dockyard.engine.images import digest, tarsafe
from dockyard.engine.images.layers import LayerStore, read_json
from dockyard.engine.images.overlay import (
    MERGED_FLAGS,
    MNT_DETACH,
    MS_BIND,
    MS_NOSUID,
    MS_REMOUNT,
    layers_recorded_under,
    mount,
    umount,
)

log = logging.getLogger("dockyard.engine.images")

DRIVER = "vfs"
UPPER_DIR_MISSING = (
    "not supported with the vfs storage driver (the engine keeps no record of a container's changes "
    "there): run the engine with --storage-driver overlay2 on a data-root that can hold overlayfs"
)


class VfsRootfsManager:
    """Creates and removes per-container full copies of an image's layers (the RootfsManager interface)."""

    driver = DRIVER

    def __init__(self, data_root: str, layer_store: LayerStore, root_owner: tuple[int, int] | None = None) -> None:
        """root_owner: with user namespace remapping, the host uid/gid of the containers' root (owns the rootfs)."""
        self.data_root = data_root
        self.root_owner = root_owner
        self.merged_flags = MERGED_FLAGS if root_owner is None else MERGED_FLAGS & ~MS_NOSUID
        self.root = os.path.join(data_root, "vfs")
        self.layers = layer_store
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def paths(self, container_id: str) -> dict[str, str]:
        """ "merged" is the container's root directory (named as overlay2's, which callers use)."""
        base = os.path.join(self.root, container_id)
        return {"dir": base, "merged": os.path.join(base, "rootfs")}

    def upper_dir(self, container_id: str) -> str:
        """The container's changes as a directory: none on vfs (Unsupported)."""
        raise Unsupported("reading a container's changes is " + UPPER_DIR_MISSING)

    def graph_driver_data(self, container_id: str, diff_ids: list[str]) -> dict[str, str]:
        """GraphDriver.Data for container inspect (Docker's vfs shows the directory only)."""
        return {"Dir": self.paths(container_id)["merged"]}

    def mount(self, container_id: str, diff_ids: list[str]) -> str:
        """Build (once) the rootfs of a container; diff_ids LOWEST first. -> its path."""
        if not container_id or "/" in container_id or container_id.startswith("."):
            raise ValueError("bad container id %r" % container_id)
        for diff_id in diff_ids:
            digest.check(diff_id, "diff ID")
        p = self.paths(container_id)
        os.makedirs(p["dir"], mode=0o700, exist_ok=True)
        record = os.path.join(p["dir"], "layers.json")
        rec = read_json(record)
        if rec is None:
            atomic_write_json(record, {"layers": list(diff_ids)}, durable=True)
        else:
            diff_ids = rec["layers"]
        if os.path.isdir(p["merged"]):
            self._bind(p["merged"])
            return p["merged"]
        stage = os.path.join(p["dir"], ".rootfs-" + uuid.uuid4().hex[:8])
        os.mkdir(stage, 0o755)
        try:
            if self.root_owner is not None:
                os.chown(stage, *self.root_owner)
            copy_layers(self.layers, diff_ids, stage, self.layers.shift)
            os.rename(stage, p["merged"])
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        self._bind(p["merged"])
        return p["merged"]

    def _bind(self, path: str) -> None:
        """Make `path` a nodev(,nosuid) bind mount of itself, unless it is one already."""
        if os.path.ismount(path):
            return
        try:
            mount(path, path, None, MS_BIND)
            mount("none", path, None, MS_REMOUNT | MS_BIND | self.merged_flags)
        except OSError as exc:
            self._unbind(path)
            raise SystemFailure("error mounting the container's root filesystem: %s" % (exc.strerror or exc)) from None

    @staticmethod
    def _unbind(path: str) -> None:
        for _ in range(8):  # stacked binds come off one at a time
            try:
                umount(path, MNT_DETACH)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOENT):
                    return
                raise SystemFailure("cannot unmount %s: %s" % (path, exc.strerror))

    def remount(self, container_id: str) -> str:
        """The rootfs from the recorded layers (after an engine restart the copy is still there: bound again)."""
        p = self.paths(container_id)
        rec = read_json(os.path.join(p["dir"], "layers.json"))
        if rec is None:
            raise SystemFailure("container %s has no root filesystem record" % container_id)
        return self.mount(container_id, rec["layers"])

    def is_mounted(self, container_id: str) -> bool:
        return os.path.ismount(self.paths(container_id)["merged"])

    def unmount(self, container_id: str) -> None:
        """Drop the engine's bind; the copy stays (a stopped container keeps its files)."""
        self._unbind(self.paths(container_id)["merged"])

    def remove(self, container_id: str) -> None:
        self.unmount(container_id)
        shutil.rmtree(self.paths(container_id)["dir"], ignore_errors=True)

    def layers_in_use(self) -> set[str]:
        """Diff IDs used by any container's rootfs."""
        return layers_recorded_under(self.root)


def copy_layers(
    layers: LayerStore, diff_ids: list[str], dest: str, shift: Callable[[int, int], tuple[int, int]] | None
) -> None:
    """Extract each layer's tar into `dest`, lowest first, whiteouts applied (confined to `dest`)."""
    for diff_id in diff_ids:
        layer = layers.get(diff_id)
        try:
            with layer.open_tar() as fh:
                tarsafe.safe_extract(fh, dest, whiteouts="apply", allow_devices=True, shift=shift)
        except OSError as exc:
            raise SystemFailure("copying layer %s: %s" % (diff_id, exc.strerror or exc)) from None
