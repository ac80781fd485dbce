"""Starts and stops the engine's subsystems in dependency order; each part adds its own lines here.

Called by the daemon once its listeners are open and before it serves anything. Order matters:
1. the runtime's fork server is forked first, while the daemon is still single-threaded;
2. the stores (images, volumes) and the network register themselves in engine.services;
3. the runtime re-attaches to live containers and applies restart policies last, because
   restarting a container needs the images (rootfs) and the network.
A part's start(engine) registers its service object: engine.services["<name>"] = obj.
"""

import logging

log = logging.getLogger("dockyard.engine")


def start_services(engine):
    from dockyard.engine.runtime import service as runtime_service

    runtime_service.prefork(engine)  # fork server: must run before any thread exists

    # -- stores and network: one line per part, e.g. `images_service.start(engine)` ----------
    from dockyard.engine.network import service as network_service

    network_service.start(engine)  # bridge network: leases, ports (bridge + NAT set up on first use)
    from dockyard.engine.images import service as images_service

    images_service.start(engine)  # images and volumes: engine.services["images"], ["volumes"]

    # -----------------------------------------------------------------------------------------
    runtime_service.start(engine)  # containers: events, restore, restart policies


def stop_services(engine):
    """Daemon shutdown: stop in reverse order. Containers keep running (live restore)."""
    from dockyard.engine.runtime import service as runtime_service

    runtime_service.stop(engine)
