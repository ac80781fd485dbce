"""Which storage driver holds container root filesystems: overlay2, or vfs where overlayfs cannot work.

Chosen once at engine start. An explicit --storage-driver is honoured (overlay2 that cannot mount fails each
create with overlay.py's hint, as before); without one, a tiny overlay mount is tried in the data-root and,
if the kernel refuses (the data-root is itself on overlayfs: containers in containers, some CI runners),
the engine falls back to vfs, as Docker does, with a warning in /info.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Union

from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images.layers import LayerStore
from dockyard.engine.images.overlay import RootfsManager, filesystem_of, overlay_works_in
from dockyard.engine.images.vfs import VfsRootfsManager

log = logging.getLogger("dockyard.engine.images")

DRIVERS = ("overlay2", "vfs")
AnyRootfsManager = Union[RootfsManager, VfsRootfsManager]


def choose(requested: str | None, data_root: str) -> tuple[str, str | None]:
    """-> (driver, warning or None). requested: the configured driver, "" / None for automatic."""
    if requested:
        if requested not in DRIVERS:
            raise InvalidParameter(
                "unsupported storage driver %r (this engine has %s)" % (requested, ", ".join(DRIVERS))
            )
        return requested, None
    probe_dir = os.path.join(data_root, "overlay")  # overlay2's own directory (RootfsManager.root)
    os.makedirs(probe_dir, mode=0o700, exist_ok=True)
    why = overlay_works_in(probe_dir)
    if why is None:
        return "overlay2", None
    fstype, mnt = filesystem_of(data_root)
    warning = (
        "WARNING: overlayfs does not work in data-root %s (on %s at %s: %s): using the vfs storage driver, "
        "which copies each container's image (slow, uses disk; docker diff/commit/build are not available); "
        "put --data-root on ext4, xfs, btrfs or tmpfs" % (data_root, fstype or "?", mnt or "?", why)
    )
    log.warning(warning)
    return "vfs", warning


def rootfs_manager(
    driver: str, data_root: str, layer_store: LayerStore, root_owner: tuple[int, int] | None
) -> AnyRootfsManager:
    """The container-root manager of `driver` (overlay2 unless vfs)."""
    make: Callable[..., AnyRootfsManager] = VfsRootfsManager if driver == "vfs" else RootfsManager
    return make(data_root, layer_store, root_owner)
