"""The image part of the engine: layer and image stores, load/save/import, rootfs mounts, safe tar."""
