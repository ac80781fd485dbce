"""Events resource: GET /events streams the engine's event bus (since/until/filters)."""

import time

from dockyard.engine.api.containers import client_gone
from dockyard.engine.runtime.logs import parse_since

FILTERS = (
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "service",
    "type",
    "volume",
    "config",
    "secret",
)


def register(router, engine):
    router.add("GET", "/events", events)


def _matches(ev, filters):
    if filters.get("type") and ev.type not in filters.get("type"):
        return False
    if filters.get("event"):
        action = ev.action.split(":", 1)[0]
        if ev.action not in filters.get("event") and action not in filters.get("event"):
            return False
    name = ev.attributes.get("name", "")
    for key in ("container", "image", "network", "volume"):
        values = filters.get(key)
        if not values:
            continue
        if ev.type != key and not (key == "image" and ev.type == "container"):
            return False
        if key == "image" and ev.type == "container":
            candidates = {ev.attributes.get("image", "")}
        else:
            candidates = {ev.actor, name}
        if not any(v in candidates or (len(v) >= 3 and ev.actor.startswith(v)) for v in values):
            return False
    if filters.get("scope") and ev.scope not in filters.get("scope"):
        return False
    if not filters.match_labels(ev.attributes):
        return False
    return True


def events(req):
    bus = req.engine.events
    filters = req.filters()
    filters.validate(FILTERS)
    since = parse_since(req.query_value("since"))
    until = parse_since(req.query_value("until"))
    stream = req.stream(200, "application/json")
    past, seq = bus.since(since, until)
    try:
        if since is not None:
            for ev in past:
                if _matches(ev, filters):
                    stream.write_json(ev.to_api())
        bus.listeners += 1
        try:
            while True:
                if until is not None and time.time_ns() >= until:
                    return None
                timeout = 1.0
                if until is not None:
                    timeout = max(0.0, min(1.0, (until - time.time_ns()) / 1e9))
                new, seq = bus.wait(seq, timeout)
                for ev in new:
                    if until is not None and ev.ns > until:
                        return None
                    if _matches(ev, filters):
                        stream.write_json(ev.to_api())
                if client_gone(req):
                    req.must_close = True
                    return None
        finally:
            bus.listeners -= 1
    except OSError:
        req.must_close = True
        return None
