"""Swarm resources as dockerd answers them on a node outside any swarm.

dockyard has no swarm mode. dockerd outside a swarm answers the manager endpoints with 503
"This node is not a swarm manager…" and `POST /swarm/leave` with 503 "This node is not part of a
swarm": docker-py's `leave_swarm(force=True)` takes that 503 as success and `docker info` and
`docker node ls` print dockerd's words. Joining or creating a swarm is refused (501).
"""

from __future__ import annotations

from dockyard.engine.errors import Unavailable, Unsupported

NOT_A_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
    "to connect this node to swarm and try again."
)
NOT_IN_SWARM = "This node is not part of a swarm"

# (method, pattern) of every manager-only endpoint of the Engine API.
MANAGER_ROUTES = (
    ("GET", "/swarm"),
    ("GET", "/swarm/unlockkey"),
    ("POST", "/swarm/update"),
    ("POST", "/swarm/unlock"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
    ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/update"),
    ("GET", "/services"),
    ("POST", "/services/create"),
    ("GET", "/services/{id}"),
    ("DELETE", "/services/{id}"),
    ("POST", "/services/{id}/update"),
    ("GET", "/services/{id}/logs"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{id}"),
    ("GET", "/tasks/{id}/logs"),
    ("GET", "/secrets"),
    ("POST", "/secrets/create"),
    ("GET", "/secrets/{id}"),
    ("DELETE", "/secrets/{id}"),
    ("POST", "/secrets/{id}/update"),
    ("GET", "/configs"),
    ("POST", "/configs/create"),
    ("GET", "/configs/{id}"),
    ("DELETE", "/configs/{id}"),
    ("POST", "/configs/{id}/update"),
)


def register(router, engine):
    for method, pattern in MANAGER_ROUTES:
        router.add(method, pattern, not_a_manager)
    router.add("POST", "/swarm/leave", not_in_swarm)
    router.add("POST", "/swarm/init", no_swarm_mode)
    router.add("POST", "/swarm/join", no_swarm_mode)


def not_a_manager(req):
    raise Unavailable(NOT_A_MANAGER)


def not_in_swarm(req):
    raise Unavailable(NOT_IN_SWARM)


def no_swarm_mode(req):
    raise Unsupported("dockyard does not support swarm mode")
