"""Starts the runtime at daemon boot: the fork server first (while the daemon has no threads),
then the container manager, the exec manager and live restore; registers the services."""

import logging
import threading

from dockyard.engine.runtime.execs import ExecManager
from dockyard.engine.runtime.manager import ContainerManager

log = logging.getLogger("dockyard.engine")


def prefork(engine):
    """Create the manager and fork the fork server; nothing here may start a thread."""
    manager = ContainerManager(engine)
    manager.forkserver.start()
    engine.services["containers"] = manager
    engine.services["events"] = manager.events


def start(engine):
    """After the other parts registered: restore containers, wire hooks, apply restart policies."""
    manager = engine.services["containers"]
    manager.execs = ExecManager(manager)
    engine.services["execs"] = manager.execs
    manager.monitor.start()
    images, volumes = engine.services.get("images"), engine.services.get("volumes")
    if images is not None and hasattr(images, "set_usage_check"):
        images.set_usage_check(manager.using_image)
    if volumes is not None and hasattr(volumes, "set_usage_check"):
        volumes.set_usage_check(manager.using_volume)
    loaded, died = manager.restore()
    engine.add_info_provider(lambda: _counts(manager))
    if loaded:
        log.info(
            "restored %d containers (%d running, %d died while the engine was away)",
            len(loaded),
            sum(1 for c in loaded if c.running),
            len(died),
        )

    def policies():
        try:
            manager.settle_dead(died)
            manager.start_policies(loaded, died)
        except Exception:
            log.exception("applying restart policies at start failed")

    threading.Thread(target=policies, name="restart-policies", daemon=True).start()
    return manager


def stop(engine):
    manager = engine.services.get("containers")
    if manager is not None:
        manager.shutdown()


def _counts(manager):
    items = manager.list()
    running = sum(1 for c in items if c.running and not c.state.get("Paused"))
    paused = sum(1 for c in items if c.state.get("Paused"))
    return {
        "Containers": len(items),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": len(items) - running - paused,
    }
