"""GET /system/df (`docker system df [-v]`): what images, containers, volumes and the build cache hold."""

from __future__ import annotations

import time
from collections import Counter

from dockyard.engine.api import images as images_api
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.runtime import views

TYPES = ("container", "image", "volume", "build-cache")


def register(router, engine):
    router.add("GET", "/system/df", system_df)


def system_df(req):
    asked = [t for t in req.query.get("type", []) if t]
    for t in asked:
        if t not in TYPES:
            raise InvalidParameter("unknown object type: %s" % t)
    types = set(asked or TYPES)
    engine = req.engine
    out: dict = {}
    containers = engine.containers.list()
    if "image" in types:
        store = engine.images
        imgs = store.list()
        used_by = Counter(d for img in imgs for d in set(img.diff_ids))
        layer_size = {}
        for diff_id in used_by:
            try:
                layer_size[diff_id] = store.layers.get(diff_id).size
            except Exception:
                layer_size[diff_id] = 0  # removed meanwhile
        users = Counter(c.image_id for c in containers)
        summaries = []
        for img in imgs:
            s = images_api.summary(img, req.api_version)
            # moby: SharedSize is what the image shares with other images, Containers who uses it
            s["SharedSize"] = sum(layer_size[d] for d in set(img.diff_ids) if used_by[d] > 1)
            s["Containers"] = users[img.id]
            summaries.append(s)
        out["LayersSize"] = sum(layer_size.values())
        out["Images"] = summaries
    if "container" in types:
        now = time.time()
        out["Containers"] = [views.summary(c, engine.containers, True, now) for c in containers]
    if "volume" in types:
        vols = []
        for vol in engine.volumes.list():
            entry = vol.to_api()
            entry["UsageData"] = {"Size": vol.disk_usage(), "RefCount": len(engine.volumes.users(vol.name))}
            vols.append(entry)
        out["Volumes"] = vols
    if "build-cache" in types:
        out["BuildCache"] = []  # the classic builder's cache is its images (counted above)
    return out
