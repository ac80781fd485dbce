"""The one place where resource modules register their routes and common headers are defined."""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Callable

from dockyard.engine import API_VERSION, __version__
from dockyard.engine.api import (
    containerfs,
    containers,
    diskusage,
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
from dockyard.engine.errors import SystemFailure


class LazyResource:
    """A resource whose module is imported on the first request to one of its routes, not at start: the
    builder and the registry client are big and an idle engine (most engines, most of the time) needs neither.
    The routes are declared here so the router keeps its order; the module's register() must add exactly them."""

    def __init__(self, load: Callable[[], ModuleType], routes: tuple[tuple[str, str], ...]) -> None:
        self.load = load
        self.routes = tuple((method.upper(), pattern) for method, pattern in routes)

    def handlers(self, engine: Any) -> dict[tuple[str, str], Callable[[Any], Any]]:
        """Import the module and let it register for `engine`: its handlers by (method, pattern)."""
        module = self.load()
        routes = Router()
        module.register(routes, engine)
        found = {(r.method, r.pattern): r.handler for r in routes.routes}
        if set(found) != set(self.routes):
            raise SystemFailure(
                "routes of %s differ from those declared in engine/api/routes.py: %s"
                % (module.__name__, sorted(set(found) ^ set(self.routes)))
            )
        return found

    def register(self, router: Router, engine: Any) -> None:
        """Placeholders in `router`; the first request to any of them loads the module for this engine."""
        loaded: dict[tuple[str, str], Callable[[Any], Any]] = {}
        lock = threading.Lock()

        def handle(req: Any, key: tuple[str, str]) -> Any:
            with lock:
                if not loaded:
                    loaded.update(self.handlers(engine))
            return loaded[key](req)

        for key in self.routes:
            router.add(key[0], key[1], lambda req, key=key: handle(req, key))


def _auth() -> ModuleType:
    from dockyard.engine.api import auth  # on first use: it loads the registry client (LazyResource)

    return auth


def _distribution() -> ModuleType:
    from dockyard.engine.api import distribution  # on first use: it loads the registry client (LazyResource)

    return distribution


def _build() -> ModuleType:
    from dockyard.engine.api import build  # on first use: it loads the builder (LazyResource)

    return build


AUTH = LazyResource(_auth, (("POST", "/auth"),))
DISTRIBUTION = LazyResource(_distribution, (("GET", "/distribution/{name:.*}/json"),))
BUILD = LazyResource(
    _build,
    (("POST", "/build"), ("POST", "/build/prune"), ("POST", "/session"), ("POST", "/grpc"), ("GET", "/grpc")),
)

# One module per resource; each has register(router, engine). Order matters only for overlapping patterns.
RESOURCE_MODULES = (
    system,
    AUTH,
    diskusage,
    swarm,
    networks,
    images,
    DISTRIBUTION,
    volumes,
    filecopy,
    containerfs,
    containers,
    exec_,
    events,
    BUILD,
)
LAZY_RESOURCES = (AUTH, DISTRIBUTION, BUILD)


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
