"""The one place where resource modules register their routes and common headers are defined."""

from dockyard.engine import API_VERSION, __version__
from dockyard.engine.api import (
    auth,
    build,
    containerfs,
    containers,
    diskusage,
    distribution,
    events,
    filecopy,
    images,
    networks,
    swarm,
    system,
    volumes,
)
from dockyard.engine.api import exec as exec_
from dockyard.engine.api.router import Router

# One module per resource; each has register(router, engine). Order matters only for overlapping patterns.
RESOURCE_MODULES = (
    system,
    auth,
    diskusage,
    swarm,
    networks,
    images,
    distribution,
    volumes,
    filecopy,
    containerfs,
    containers,
    exec_,
    events,
    build,
)


def common_headers():
    """Headers moby puts on every response."""
    return [
        ("Api-Version", API_VERSION),
        ("Docker-Experimental", "false"),
        ("Ostype", "linux"),
        ("Server", "Docker/%s (linux)" % __version__),
    ]


def build_router(engine, modules=RESOURCE_MODULES):
    router = Router()
    for module in modules:
        module.register(router, engine)
    return router
