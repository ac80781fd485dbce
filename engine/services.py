"""The engine's parts, built once at start-up and wired by hand: the one place that shows who uses whom.

    images      ImageStore      image configs, tags, layers and container overlay roots
    volumes     VolumeStore     named and anonymous volumes
    network     NetworkManager  networks, endpoints, ports, NAT (bridge and pyroute2 set up on first use)
    containers  ContainerManager  the runtime; gets the fork server, images, volumes and network
    events      EventBus        the runtime's event bus (/events)
    execs       ExecManager     `docker exec` instances (owned by the container manager)

Images and volumes ask the runtime back whether a container uses them; those two callbacks are set
here too (the runtime is built after the stores). API handlers reach the parts as req.engine.<part>.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from dockyard.engine.atomicfile import atomic_write
from dockyard.engine.config import Config
from dockyard.engine.errors import EngineError, InvalidParameter
from dockyard.engine.images import storagedriver
from dockyard.engine.images.overlay import filesystem_of
from dockyard.engine.images.store import ImageStore
from dockyard.engine.network.manager import NetworkManager
from dockyard.engine.runtime.events import EventBus
from dockyard.engine.runtime.execs import ExecManager
from dockyard.engine.runtime.forkserver import ForkServer
from dockyard.engine.runtime.health import HealthMonitor
from dockyard.engine.runtime.manager import ContainerManager
from dockyard.engine.runtime.userns import IdMap, RemapError
from dockyard.engine.runtime.userns import data_root as remapped_data_root
from dockyard.engine.runtime.userns import load as load_id_map
from dockyard.engine.volumes import VolumeStore

log = logging.getLogger("dockyard.engine")


class Engine:
    """What every API handler shares (req.engine): the configuration, the engine's identity, its parts."""

    def __init__(
        self,
        config: Config,
        engine_id: str,
        warnings: list[str],
        images: ImageStore,
        volumes: VolumeStore,
        network: NetworkManager,
        containers: ContainerManager,
    ) -> None:
        self.config = config
        self.id = engine_id
        self.started_at = time.time()
        self.warnings = warnings  # shown by /info; the parts append theirs while they start
        self.images = images
        self.volumes = volumes
        self.network = network
        self.containers = containers

    @property
    def events(self) -> EventBus:
        return self.containers.events

    @property
    def execs(self) -> ExecManager:
        return self.containers.execs

    def collect_info(self) -> dict[str, int]:
        """The /info counters: containers by state and images; a part that fails is logged, not fatal."""
        info: dict[str, int] = {}
        for count in (self.containers.counts, self._image_count):
            try:
                info.update(count())
            except Exception:
                log.exception("/info: %s failed", count.__name__)
        return info

    def _image_count(self) -> dict[str, int]:
        return {"Images": len(self.images.ids())}


def build_engine(config: Config, engine_id: str, warnings: list[str], forkserver: ForkServer) -> Engine:
    """Build every part around the running fork server: engine/daemon.py forks it before the daemon's heavy
    imports, and stops it whatever happens here."""
    idmap: IdMap | None = None
    if config.userns_remap:
        # As dockerd: everything lives under <data-root>/<uid>.<gid>/, layers extracted shifted into the range.
        try:
            idmap = load_id_map(config.userns_remap)
        except RemapError as exc:
            raise EngineError(str(exc)) from None
        config.data_root = remapped_data_root(config.data_root, idmap)
        log.info("user namespace remapping: container root is %d:%d on the host", *idmap.root)
    try:
        driver, driver_warning = storagedriver.choose(config.storage_driver, config.data_root)
    except InvalidParameter as exc:
        raise EngineError(str(exc)) from None
    config.storage_driver = driver  # /info Driver: the driver in use, chosen or found
    if driver_warning:
        warnings.append(driver_warning)
    images = ImageStore(config.data_root, idmap.shift if idmap else None, driver)
    volumes = VolumeStore(config.data_root, idmap.root if idmap else None)
    try:
        network = NetworkManager(config.data_root, config.opts, warnings)
    except ValueError as exc:  # a bad bip=/mtu=/bridge= engine opt
        raise EngineError("network configuration: %s" % exc) from None
    containers = ContainerManager(config, forkserver, images, volumes, network, idmap)
    images.set_usage_check(containers.using_image)
    images.set_running_check(containers.is_running)
    volumes.set_usage_check(containers.using_volume)
    if driver == "overlay2":
        warn_if_data_root_cannot_hold_overlays(config.data_root, warnings)
    return Engine(config, engine_id, warnings, images, volumes, network, containers)


def start_engine(engine: Engine) -> None:
    """Re-attach to live containers, then apply restart policies in the background."""
    containers = engine.containers
    containers.monitor.start()
    loaded, died = containers.restore()
    if loaded:
        log.info(
            "restored %d containers (%d running, %d died while the engine was away)",
            len(loaded),
            sum(1 for c in loaded if c.running),
            len(died),
        )

    def policies() -> None:
        try:
            containers.settle_dead(died)
            containers.start_policies(loaded, died)
        except Exception:
            log.exception("applying restart policies at start failed")

    threading.Thread(target=policies, name="restart-policies", daemon=True).start()
    HealthMonitor(containers, containers.execs).start()  # --health-* / HEALTHCHECK probes


def stop_engine(engine: Engine) -> None:
    """Daemon shutdown. Containers keep running (live restore)."""
    engine.containers.shutdown()


def warn_if_data_root_cannot_hold_overlays(data_root: str, warnings: list[str]) -> None:
    fstype, mnt = filesystem_of(data_root)
    if fstype in ("overlay", "aufs"):
        text = (
            "WARNING: data-root %s is on %s (%s): container root filesystems (overlayfs) cannot be "
            "mounted there; use --data-root on ext4, xfs, btrfs or tmpfs" % (data_root, fstype, mnt)
        )
        log.warning(text)
        warnings.append(text)


def load_or_create_engine_id(data_root: str) -> str:
    """A UUID persisted in <data-root>/engine-id, so /info ID is stable across restarts."""
    path = os.path.join(data_root, "engine-id")
    try:
        with open(path) as fh:
            value = fh.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    atomic_write(path, (value + "\n").encode(), durable=True)
    return value
