"""Registers the image store and the volume store as engine.services["images"] / ["volumes"]."""

import logging

from dockyard.engine.images.rootfs import filesystem_of
from dockyard.engine.images.store import ImageStore
from dockyard.engine.volumes import VolumeStore

log = logging.getLogger("dockyard.engine.images")


def _container_running(engine, container_id):
    containers = engine.services.get("containers")
    if containers is None:
        return False
    try:
        return bool(getattr(containers.get(container_id), "pid", 0))
    except Exception:  # gone meanwhile: not running
        return False


def start(engine):
    data_root = engine.config.data_root
    images = ImageStore(data_root)
    images.set_running_check(lambda cid: _container_running(engine, cid))
    engine.services["images"] = images
    engine.services["volumes"] = VolumeStore(data_root)
    engine.add_info_provider(lambda: {"Images": len(images.ids())})
    fstype, mnt = filesystem_of(data_root)
    if fstype in ("overlay", "aufs"):
        text = (
            "WARNING: data-root %s is on %s (%s): container root filesystems (overlayfs) cannot be "
            "mounted there; use --data-root on ext4, xfs, btrfs or tmpfs" % (data_root, fstype, mnt)
        )
        log.warning(text)
        engine.warnings.append(text)
