"""Volumes resource: docker volume create / ls / inspect / rm / prune with docker's JSON shapes."""

from dockyard.engine.api import bodies
from dockyard.engine.api.responses import json_response
from dockyard.engine.api.router import version_less
from dockyard.engine.errors import InvalidParameter

LIST_FILTERS = ("dangling", "driver", "label", "name")
PRUNE_FILTERS = ("label", "label!", "all")


def register(router, engine):
    router.add("GET", "/volumes", list_volumes)
    router.add("POST", "/volumes/create", create_volume)
    router.add("POST", "/volumes/prune", prune_volumes)
    router.add("GET", "/volumes/{name}", inspect_volume)
    router.add("DELETE", "/volumes/{name}", remove_volume)


def _truthy(values, name):
    out = set()
    for v in values:
        if v.lower() in ("true", "1"):
            out.add(True)
        elif v.lower() in ("false", "0"):
            out.add(False)
        else:
            raise InvalidParameter("invalid filter '%s=%s'" % (name, v))
    return out


def list_volumes(req):
    store = req.engine.volumes
    filters = req.filters()
    filters.validate(LIST_FILTERS)
    dangling = _truthy(filters.get("dangling"), "dangling") if filters.has("dangling") else None
    labels = filters.label_matcher()
    out = []
    for vol in store.list():
        if dangling is not None and len(dangling) == 1:
            if (not store.users(vol.name)) not in dangling:
                continue
        if filters.has("driver") and "local" not in filters.get("driver"):
            continue
        if filters.has("name") and not any(n in vol.name for n in filters.get("name")):
            continue
        if labels is not None and not labels(vol.labels):
            continue
        out.append(vol.to_api())
    return {"Volumes": out, "Warnings": []}


def create_volume(req):
    store = req.engine.volumes
    body = req.json(default={}, schema=bodies.VOLUME_CREATE) or {}
    labels = body.get("Labels") or {}
    vol = store.create(
        name=body.get("Name") or None,
        labels=labels,
        driver=body.get("Driver") or "local",
        options=body.get("DriverOpts") or None,
    )
    return json_response(vol.to_api(), status=201)


def inspect_volume(req):
    return req.engine.volumes.get(req.params["name"]).to_api()


def remove_volume(req):
    req.engine.volumes.remove(req.params["name"], force=req.query_bool("force"))
    return None


def prune_volumes(req):
    store = req.engine.volumes
    filters = req.filters()
    filters.validate(PRUNE_FILTERS)
    include_named = version_less(req.api_version or "1.50", "1.42")
    if filters.has("all"):
        include_named = True in _truthy(filters.get("all"), "all")
    names, reclaimed = store.prune(include_named=include_named, label_filter=filters.label_matcher("label", "label!"))
    return {"VolumesDeleted": names or None, "SpaceReclaimed": reclaimed}
