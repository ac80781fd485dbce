"""A container's filesystem: POST /commit, GET /containers/{id}/changes, GET /containers/{id}/export."""

from __future__ import annotations

from dockyard.engine.api.responses import json_response
from dockyard.engine.build import containerfs
from dockyard.engine.errors import InvalidParameter


def register(router, engine):
    router.add("POST", "/commit", commit)
    router.add("GET", "/containers/{id}/changes", changes)
    router.add("GET", "/containers/{id}/export", export)


def commit(req):
    name = req.query_value("container") or ""
    if not name:
        raise InvalidParameter("container is required")
    c = req.engine.containers.get(name)
    body = req.json(default=None)
    if body is not None and not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: the body must be a container config object")
    img = containerfs.commit(
        req.engine.images,
        req.engine.containers,
        c,
        repo=req.query_value("repo") or None,
        tag=req.query_value("tag") or None,
        comment=req.query_value("comment") or "",
        author=req.query_value("author") or "",
        pause=req.query_bool("pause", default=True),
        changes_lines=[line for v in req.query.get("changes", []) for line in v.splitlines()],
        config=body,
    )
    return json_response({"Id": img.id}, status=201)


def changes(req):
    c = req.engine.containers.get(req.params["id"])
    return json_response(containerfs.changes(req.engine.images, c))


def export(req):
    c = req.engine.containers.get(req.params["id"])
    stream = req.stream(200, "application/x-tar")
    containerfs.export(req.engine.images, c, stream)
    return None
