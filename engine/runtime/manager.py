"""ContainerManager (req.engine.containers): the containers' lifecycle.

create, start (through the fork server and a supervisor), stop, kill, restart, pause, wait,
remove, rename, resize, attach; exit handling with --rm and restart policies; live restore
(reconnecting to supervisors after an engine restart). State lives in store.Container.
The manager owns the containers' records (IDs, names) and creates and removes them; it hands
starting a process to starter.ContainerStarter, signals, pause, attach and wait to
control.ContainerControl, and exits and restart policies to exits.ExitsMixin.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from typing import Callable, List  # List: the manager has a method named list

from dockyard.engine.config import Config
from dockyard.engine.errors import Conflict, EngineError, InvalidParameter, NotFound, NotModified, SystemFailure
from dockyard.engine.images.store import ImageStore
from dockyard.engine.network.manager import NetworkManager
from dockyard.engine.runtime import cgroups, links, logs, names, userns
from dockyard.engine.runtime import create as createmod
from dockyard.engine.runtime.control import KILL_WAIT, ContainerControl
from dockyard.engine.runtime.events import EventBus
from dockyard.engine.runtime.execs import ExecManager
from dockyard.engine.runtime.exits import ExitsMixin
from dockyard.engine.runtime.forkserver import ForkServer
from dockyard.engine.runtime.monitor import Monitor
from dockyard.engine.runtime.starter import ContainerStarter, StartFailed
from dockyard.engine.runtime.store import Container
from dockyard.engine.timefmt import rfc3339nano_ns
from dockyard.engine.volumes import VolumeStore

log = logging.getLogger("dockyard.engine")
# How long a start or stop waits for the previous run's network endpoints to be released (normally milliseconds).
NETWORK_RELEASE_WAIT = 30


class ContainerManager(ExitsMixin):
    """The containers: their lifecycle, their records on disk, and the parts a container stands on."""

    def __init__(
        self,
        config: Config,
        forkserver: ForkServer,
        images: ImageStore,
        volumes: VolumeStore,
        network: NetworkManager,
        idmap: userns.IdMap | None = None,
    ) -> None:
        cfg = config
        self.idmap = idmap  # --userns-remap: containers run in a user namespace unless --userns=host
        self.images = images
        self.volumes = volumes
        self.network = network
        self.root = os.path.join(cfg.data_root, "containers")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.sock_dir = os.path.join(cfg.exec_root, "sv")
        os.makedirs(self.sock_dir, mode=0o700, exist_ok=True)
        self.cgroup_parent = (cfg.opts or {}).get("cgroup-parent") or "dockyard"
        # --engine-opt log-driver=: the driver of containers created without --log-driver (dockerd --log-driver)
        self.default_log_driver = logs.check_log_driver((cfg.opts or {}).get("log-driver") or logs.JSON_FILE)
        self.layout = cgroups.layout()
        self.forkserver = forkserver  # a fresh interpreter started on demand (runtime/forkserver.py)
        self.events = EventBus()
        self.monitor = Monitor(self._supervisor_gone)
        self.containers: dict[str, Container] = {}
        self.names: dict[str, str] = {}  # name -> container ID
        self.lock = threading.RLock()
        self.starter = ContainerStarter(
            forkserver,
            images,
            network,
            self.monitor,
            self.cgroup_parent,
            self.layout,
            self.sock_dir,
            idmap,
            lookup=self.get,
            emit=self.emit,
            disconnect=self._disconnect,
        )
        self.control = ContainerControl(emit=self.emit, cancel_restart=self._cancel_restart)
        self.execs = ExecManager(self)

    def emit(self, container: Container, action: str, extra: dict[str, str] | None = None) -> None:
        attrs = {"image": container.config.get("Image") or container.image_id, "name": container.name}
        for key, value in (container.config.get("Labels") or {}).items():
            attrs.setdefault(key, value)
        attrs.update(extra or {})
        self.events.emit("container", action, container.id, attrs)

    # -- lookup ------------------------------------------------------------------------------
    def get(self, ref: str) -> Container:
        """By full ID, name (with or without '/'), or unique ID prefix; NotFound otherwise."""
        ref = (ref or "").strip()
        with self.lock:
            c = self.containers.get(ref)
            if c is not None:
                return c
            cid = self.names.get(ref.lstrip("/"))
            if cid is not None:
                return self.containers[cid]
            if ref:
                matches = [c for cid, c in self.containers.items() if cid.startswith(ref)]
                if len(matches) == 1:
                    return matches[0]
                if len(matches) > 1:
                    raise InvalidParameter("multiple IDs found with provided prefix: %s" % ref)
        raise NotFound("No such container: %s" % ref)

    def is_running(self, container_id: str) -> bool:
        """False for an unknown container: one removed meanwhile is not running."""
        with self.lock:
            c = self.containers.get(container_id)
        return c is not None and bool(c.pid)

    def counts(self) -> dict[str, int]:
        """The /info counters."""
        items = self.list()
        running = sum(1 for c in items if c.running and not c.state.get("Paused"))
        paused = sum(1 for c in items if c.state.get("Paused"))
        return {
            "Containers": len(items),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": len(items) - running - paused,
        }

    def list(self) -> List[Container]:
        with self.lock:
            return sorted(self.containers.values(), key=lambda c: c.record.get("CreatedNs", 0), reverse=True)

    def using_image(self, image_id: str) -> List[str]:
        return [c.id for c in self.list() if c.image_id == image_id]

    def using_volume(self, name: str) -> List[str]:
        return [c.id for c in self.list() if any(p.get("Type") == "volume" and p.get("Name") == name for p in c.mounts)]

    # -- create ------------------------------------------------------------------------------
    def create(self, body: dict, name: str | None = None) -> tuple[Container, List[str]]:
        self.forkserver.warm_up()  # a start usually follows: its server starts while the client talks to us
        if not isinstance(body, dict):
            raise InvalidParameter("config cannot be empty in order to create a container")
        ref = body.get("Image") or ""
        if not ref:
            raise InvalidParameter("No image specified")
        image = self.images.get(ref)
        hc = createmod.normalize_host_config(body.get("HostConfig"), self.default_log_driver)
        userns.check_container(hc, self.idmap is not None)
        cfg = createmod.merge_config(body, image.container_config)
        path, args = createmod.command_of(cfg)
        mode = self.starter.network_mode(hc)
        attachments = self.network.validate(hc, cfg, body.get("NetworkingConfig"))
        for link in links.parse_links(hc.get("Links")):
            try:
                self.get(link.name)
            except NotFound:
                raise InvalidParameter("could not get container for %s" % link.name) from None
        if mode == "container":  # 400, not 404: the CLI answers a 404 from create by pulling
            try:
                self.get(hc["NetworkMode"].partition(":")[2])
            except NotFound as exc:
                raise InvalidParameter(str(exc)) from None
        cid = os.urandom(32).hex()
        warnings: List[str] = []
        if not cfg.get("Hostname"):
            cfg["Hostname"] = socket.gethostname() if mode == "host" else cid[:12]
        points = createmod.parse_mounts(hc, cfg)
        with self.lock:
            if name:
                name = createmod.validate_name(name)
                other = self.names.get(name)
                if other is not None:
                    raise Conflict(
                        'Conflict. The container name "/%s" is already in use by container '
                        '"%s". You have to remove (or rename) that container to be able '
                        "to reuse that name." % (name, other)
                    )
            else:
                name = names.random_name(self.names)
            self.names[name] = cid  # reserved while we build the container
        try:
            createmod.resolve_volumes(points, self.volumes)
            for point in points:
                if point["Type"] == "bind" and point.pop("CreateSource", False):
                    if not os.path.exists(point["Source"]):
                        os.makedirs(point["Source"], 0o755, exist_ok=True)
            now = time.time_ns()
            cdir = os.path.join(self.root, cid)
            os.mkdir(cdir, 0o700)
            record = {
                "Id": cid,
                "Created": rfc3339nano_ns(now),
                "CreatedNs": now,
                "Name": "/" + name,
                "Path": path,
                "Args": args,
                "Config": cfg,
                "HostConfig": hc,
                "Image": image.id,
                "Driver": "overlay2",
                "Platform": "linux",
                "MountPoints": points,
                "ResolvConfPath": os.path.join(cdir, "resolv.conf"),
                "HostnamePath": os.path.join(cdir, "hostname"),
                "HostsPath": os.path.join(cdir, "hosts"),
                "LogPath": os.path.join(cdir, cid + "-json.log"),
                "NetworkAttachments": attachments,  # the networks to join at start (network connect adds)
            }
            c = Container(self.root, record)
            self.starter.write_etc_files(c, None)
            record["Rootfs"] = self.images.mount_rootfs(cid, image)
            c.save_config()
            c.save_state()
        except BaseException:
            with self.lock:
                self.names.pop(name, None)
            shutil.rmtree(os.path.join(self.root, cid), ignore_errors=True)
            try:
                self.images.remove_rootfs(cid)
            except Exception:
                pass
            raise
        with self.lock:
            self.containers[cid] = c
        self.emit(c, "create")
        return c, warnings

    # -- start -------------------------------------------------------------------------------
    def start(self, c: Container, restarting: bool = False) -> None:
        try:
            with c.lock:
                if c.removing or c.removed:
                    raise Conflict("container %s is marked for removal and cannot be started" % c.id)
                if c.running:
                    raise NotModified("container already started")
                self._cancel_restart(c)
                if not restarting:
                    c.state["ManuallyStopped"] = False
                self._spawn(c)
        except (StartFailed, SystemFailure):
            if c.host_config.get("AutoRemove") and not c.running:
                # Like dockerd: a --rm container that cannot start is removed (wait=removed returns).
                threading.Thread(
                    target=self.remove, args=(c,), kwargs={"force": True, "volumes": True, "auto": True}, daemon=True
                ).start()
            raise

    def _spawn(self, c: Container) -> None:
        self._wait_network_released(c)
        self.starter.spawn(c)

    @staticmethod
    def _wait_network_released(c: Container) -> None:
        # The previous run's endpoints carry the names this start will use; dockerd too releases them before
        # a stop returns. Bounded: a stuck netlink call must not wedge the container for good.
        if not c.network_released.wait(NETWORK_RELEASE_WAIT):
            log.warning(
                "network of %s still being released after %d s; starting anyway", c.id[:12], NETWORK_RELEASE_WAIT
            )

    def sock_path(self, c: Container) -> str:
        return self.starter.sock_path(c)

    # -- control (control.py) ----------------------------------------------------------------
    def kill(self, c: Container, sig_value: str | int | None = None, manual: bool = True) -> None:
        self.control.kill(c, sig_value, manual)

    def stop(self, c: Container, timeout: float | None = None, sig_value: str | int | None = None) -> bool:
        stopped = self.control.stop(c, timeout, sig_value)
        self._wait_network_released(c)
        return stopped

    def restart(self, c: Container, timeout: float | None = None, sig_value: str | int | None = None) -> None:
        if c.running or c.status == "restarting":
            self.stop(c, timeout, sig_value)
        with c.lock:
            self._spawn_checked(c)
        self.emit(c, "restart")

    def _spawn_checked(self, c):
        if c.removing or c.removed:
            raise Conflict("container %s is marked for removal and cannot be started" % c.id)
        if c.running:
            return
        self._cancel_restart(c)
        c.state["ManuallyStopped"] = False
        self._spawn(c)

    def pause(self, c: Container) -> None:
        self.control.pause(c)

    def unpause(self, c: Container) -> None:
        self.control.unpause(c)

    def resize(self, c: Container, h: int, w: int) -> None:
        self.control.resize(c, h, w)

    def attach_socket(self, c: Container, opts: dict) -> socket.socket:
        """A stream socket wired to the container's stdio: now if it runs, else at its next start."""
        return self.control.attach_socket(c, opts)

    def wait(self, c: Container, condition: str = "not-running", gone: Callable[[], bool] | None = None) -> int | None:
        """Block until `condition`; -> exit code. `gone()` True aborts (client left) -> None."""
        return self.control.wait(c, condition, gone)

    def rename(self, c: Container, new_name: str) -> None:
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        new_name = createmod.validate_name(new_name)
        old = c.name
        with self.lock:
            if new_name == old:
                raise InvalidParameter("Renaming a container with the same name as its current name")
            other = self.names.get(new_name)
            if other is not None:
                raise Conflict(
                    'Conflict. The container name "/%s" is already in use by container '
                    '"%s". You have to remove (or rename) that container to be able to '
                    "reuse that name." % (new_name, other)
                )
            self.names.pop(old, None)
            self.names[new_name] = c.id
            with c.lock:
                c.record["Name"] = "/" + new_name
                c.save_config()
        self.emit(c, "rename", {"oldName": "/" + old})

    # -- remove -------------------------------------------------------------------------------
    def remove(self, c: Container, force: bool = False, volumes: bool = False, auto: bool = False) -> None:
        with c.lock:
            if c.removed:
                if auto:
                    return
                raise NotFound("No such container: %s" % c.id)
            if c.removing:
                if auto:
                    return
                raise Conflict("removal of container %s is already in progress" % c.id)
            if c.running or c.status == "restarting":
                if not force:
                    if c.state.get("Paused"):
                        raise Conflict(
                            'cannot remove container "/%s": container is paused and must be unpaused first' % c.name
                        )
                    raise Conflict(
                        'cannot remove container "/%s": container is running: stop the '
                        "container before removing or force remove" % c.name
                    )
            c.removing = True
            self._cancel_restart(c)
        if c.running:
            seq = c.exit_seq
            with c.lock:
                c.state["ManuallyStopped"] = True
                self.control.send(c, {"op": "kill", "signal": signal.SIGKILL})
                if c.state.get("Paused"):
                    try:
                        self.control.thaw(c)
                    except EngineError:
                        pass
            if not self.control.wait_exit(c, seq, KILL_WAIT):
                with c.lock:
                    c.removing = False
                raise SystemFailure("could not kill container %s" % c.id[:12])
        self._teardown(c, volumes)

    def _teardown(self, c, volumes):
        with c.lock:
            for s, _ in c.pending_attach:
                try:
                    s.close()
                except OSError:
                    pass
            c.pending_attach = []
            settings = c.state.get("NetworkSettings")
        if settings is not None:
            self._disconnect(c, settings)
        try:
            self.images.remove_rootfs(c.id)
        except Exception as exc:
            log.warning("removing the rootfs of %s: %s", c.id[:12], exc)
        cg = cgroups.Cgroup.from_dict(c.state.get("Cgroup"))
        if cg is not None and cg.exists():
            cg.kill_all()
            cg.remove(timeout=1.0)
        try:
            os.unlink(self.sock_path(c))
        except OSError:
            pass
        shutil.rmtree(c.dir, ignore_errors=True)
        with self.lock:
            self.containers.pop(c.id, None)
            if self.names.get(c.name) == c.id:
                del self.names[c.name]
        if volumes:
            for point in c.mounts:
                if point.get("Type") == "volume" and point.get("Anonymous"):
                    try:
                        self.volumes.remove(point["Name"])
                    except EngineError as exc:
                        log.info("keeping volume %s: %s", point["Name"], exc.message)
        self.execs.forget_container(c.id)
        with c.lock:
            c.removed = True
            c.removing = False
            c.cond.notify_all()
        self.emit(c, "destroy")

    def prune(self, until_ns: int | None = None, labels: Callable[[dict], bool] | None = None) -> List[str]:
        deleted = []
        for c in self.list():
            if c.running or c.status == "restarting":
                continue
            if until_ns is not None and c.record.get("CreatedNs", 0) > until_ns:
                continue
            if labels is not None and not labels(c.config.get("Labels") or {}):
                continue
            try:
                self.remove(c)
                deleted.append(c.id)
            except EngineError:
                pass
        return deleted

    def shutdown(self) -> None:
        """The daemon stops: supervisors keep the containers running; only our ends close."""
        for c in self.list():
            timer = c.restart_timer
            if timer is not None:
                timer.cancel()
        self.forkserver.stop()
