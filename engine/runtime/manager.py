"""ContainerManager (req.engine.containers): the containers' lifecycle.

create, start (through the fork server and a supervisor), stop, kill, restart, pause, wait,
remove, rename, resize, attach; exit handling with --rm and restart policies; live restore
(reconnecting to supervisors after an engine restart). State lives in store.Container.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from typing import Callable, List  # List: the manager has a method named list

from dockyard.engine.config import Config
from dockyard.engine.errors import Conflict, EngineError, InvalidParameter, NotFound, NotModified, SystemFailure
from dockyard.engine.images.store import ImageStore
from dockyard.engine.network.manager import NetworkManager
from dockyard.engine.runtime import cgroups, channel, links, logs, names, userns
from dockyard.engine.runtime import create as createmod
from dockyard.engine.runtime import spec as specmod
from dockyard.engine.runtime.copyup import copy_up_volumes
from dockyard.engine.runtime.events import EventBus
from dockyard.engine.runtime.execs import ExecManager
from dockyard.engine.runtime.exits import ExitsMixin
from dockyard.engine.runtime.forkserver import ForkServer, ForkServerError
from dockyard.engine.runtime.monitor import Monitor
from dockyard.engine.runtime.netsettings import minimal_settings
from dockyard.engine.runtime.signals import SignalError, parse_signal
from dockyard.engine.runtime.store import ZERO_TIME, Container
from dockyard.engine.timefmt import rfc3339nano_ns
from dockyard.engine.volumes import VolumeStore

log = logging.getLogger("dockyard.engine")

START_TIMEOUT = 60.0
KILL_WAIT = 30.0
_MANUAL_STOP_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


class StartFailed(EngineError):
    """The container's process could not be started (bad command, cgroup, mounts...)."""


class CommandNotRunnable(StartFailed, InvalidParameter):
    """The command is missing or not executable (exit code 126/127): the caller's mistake."""


class ProcessStartFailed(StartFailed, SystemFailure):
    """The engine could not start the container's process."""


class PeerMissing(StartFailed, NotFound):
    """A container this one needs at start (--network container:, --link) does not exist (any more)."""


class PeerNotRunning(StartFailed, Conflict):
    """A container this one needs at start (--network container:, --link) is not running."""


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
        self.forkserver = forkserver  # forked by the caller while the daemon has no threads
        self.events = EventBus()
        self.monitor = Monitor(self._supervisor_gone)
        self.containers: dict[str, Container] = {}
        self.names: dict[str, str] = {}  # name -> container ID
        self.lock = threading.RLock()
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
        mode = self._network_mode(hc)
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
            self._write_etc_files(c, None)
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

    def _network_mode(self, hc):
        mode = hc.get("NetworkMode") or "bridge"
        if mode in ("default", "bridge"):
            return "bridge"
        if mode in ("host", "none"):
            return mode
        return self.network.network_mode(hc)

    def _write_etc_files(self, c, settings):
        cfg = c.config
        hostname = cfg.get("Hostname") or c.id[:12]
        _write_in_place(os.path.join(c.dir, "hostname"), hostname + "\n")
        _write_in_place(os.path.join(c.dir, "hosts"), self.network.hosts_file(c, settings))
        _write_in_place(os.path.join(c.dir, "resolv.conf"), self.network.resolv_conf(c))
        if userns.uses_userns(c.host_config, self.idmap):
            assert self.idmap is not None
            for name in ("hostname", "hosts", "resolv.conf"):  # the container's root may edit them
                os.chown(os.path.join(c.dir, name), *self.idmap.root)

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

    def _spawn(self, c):
        t0 = time.monotonic()
        mode = self._network_mode(c.host_config)
        net = self.network
        rootfs_path = self._mount_rootfs(c)
        self._copy_up_volumes(c, rootfs_path)
        if not os.path.exists(os.path.join(c.dir, "hosts")):
            self._write_etc_files(c, None)
        else:
            _write_in_place(os.path.join(c.dir, "resolv.conf"), net.resolv_conf(c))
        join = self._netns_owner(c) if mode == "container" else None
        self._resolve_links(c, mode)
        cg = cgroups.Cgroup.for_container(self.cgroup_parent, c.id, self.layout)
        run_id = uuid.uuid4().hex
        sock_path = self.sock_path(c)
        pending, c.pending_attach = c.pending_attach, []
        pending = [(s, o) for s, o in pending if s.fileno() >= 0]
        sv_spec = specmod.supervisor_spec(
            c,
            rootfs_path=rootfs_path,
            cgroup=cg,
            layout=self.layout,
            network_mode=mode,
            sock=sock_path,
            run_id=run_id,
            network_hook=(mode == "bridge"),
            attach_opts=[o for _, o in pending],
            join_netns=join,
            idmap=self.idmap if userns.uses_userns(c.host_config, self.idmap) else None,
        )
        try:
            os.unlink(c.exit_file)
        except FileNotFoundError:
            pass
        ctl, remote = channel.pair()
        t1 = time.monotonic()
        try:
            self.forkserver.request("supervise", sv_spec, [remote.fileno()] + [s.fileno() for s, _ in pending])
        except ForkServerError as exc:
            ctl.close()
            raise SystemFailure(str(exc)) from None
        finally:
            remote.close()
            for s, _ in pending:
                s.close()
        settings = None
        try:
            ctl.settimeout(START_TIMEOUT)
            while True:
                try:
                    msg = channel.recv(ctl)
                except (channel.ChannelClosed, OSError) as exc:
                    raise SystemFailure("the container's supervisor died while starting: %s" % exc)
                event = msg.get("event")
                if event == "netns":
                    try:
                        settings = net.connect(c, int(msg["pid"]))
                        _write_in_place(os.path.join(c.dir, "hosts"), net.hosts_file(c, settings))
                    except Exception:
                        if _netns_gone(int(msg["pid"])):
                            # The init died before its command ran (not found, not executable): its
                            # error report is queued for the supervisor, which sends "failed" after "go".
                            settings = None
                            channel.send(ctl, {"op": "go", "settings": None})
                            continue
                        channel.send(ctl, {"op": "abort"})
                        raise
                    except BaseException:
                        channel.send(ctl, {"op": "abort"})
                        raise
                    channel.send(ctl, {"op": "go", "settings": settings})
                elif event == "started":
                    break
                elif event == "failed":
                    if settings is not None:
                        self._disconnect(c, settings)
                    code = int(msg.get("code") or 127)
                    text = msg.get("error") or "start failed"
                    c.state.update({"ExitCode": code, "Error": text})
                    c.save_state()
                    kind = CommandNotRunnable if code in (126, 127) else ProcessStartFailed
                    raise kind(
                        "failed to create task for container: unable to start container process: %s: unknown" % text
                    )
        except BaseException:
            ctl.close()
            raise
        ctl.settimeout(None)
        t2 = time.monotonic()
        pid = int(msg["pid"])
        if settings is None:
            try:
                settings = net.connect(c, pid)
            except Exception as exc:
                # A process that already exited (echo) has no netns left to look at.
                level = logging.DEBUG if not os.path.exists("/proc/%d" % pid) else logging.WARNING
                log.log(level, "network connect for %s (%s) failed: %s", c.id[:12], mode, exc)
        if settings is None:
            settings = minimal_settings(mode)
        started = int(msg.get("started_at") or time.time_ns())
        c.state.update(
            {
                "Status": "running",
                "Pid": pid,
                "PidStartTime": msg.get("pid_start"),
                "ExitCode": 0,
                "Error": "",
                "OOMKilled": False,
                "StartedAt": rfc3339nano_ns(started),
                "StartedNs": started,
                "FinishedAt": ZERO_TIME,
                "FinishedNs": 0,
                "Run": run_id,
                "Cgroup": cg.to_dict(),
                "NetworkSettings": settings,
                "Paused": False,
                "Restarting": False,
                "HasBeenStarted": True,
                "Sock": sock_path,
            }
        )
        c.save_state()
        c.control = ctl
        self.monitor.add(c, ctl)
        c.start_seq += 1
        c.cond.notify_all()
        self.emit(c, "start")
        log.debug(
            "started %s: prepare %.1f ms, supervisor %.1f ms, record %.1f ms",
            c.id[:12],
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (time.monotonic() - t2) * 1000,
        )

    def _netns_owner(self, c):
        """--network container:<ref>: the running container whose netns `c` joins -> {"pid", "start"};
        `c` takes its hostname, hosts and resolv.conf, as dockerd does."""
        ref = (c.host_config.get("NetworkMode") or "").partition(":")[2]
        try:
            other = self.get(ref)
        except NotFound:
            raise PeerMissing("No such container: %s" % ref) from None
        if other.id == c.id:
            raise CommandNotRunnable("cannot join own network")
        if not other.running or not other.pid:
            raise PeerNotRunning("cannot join network of a non running container: %s" % other.id)
        for name in ("hosts", "resolv.conf", "hostname"):
            try:
                with open(os.path.join(other.dir, name), encoding="utf-8") as fh:
                    _write_in_place(os.path.join(c.dir, name), fh.read())
            except OSError:
                pass
        if c.config.get("Hostname") != other.config.get("Hostname"):
            c.config["Hostname"] = other.config.get("Hostname") or ""
            c.save_config()
        return {"pid": other.pid, "start": other.state.get("PidStartTime")}

    def _resolve_links(self, c, mode):
        """--link on the default bridge: hosts entries and ALIAS_* variables for each linked container,
        which must be running on the bridge (record LinkHosts/LinkEnv, read by the network and spec).
        On user-defined networks a link is a name for the embedded DNS only (network/names.py)."""
        env, hosts = [], []
        bridge_only = mode == "bridge" and self.network.network_name(c.host_config) == "bridge"
        for link in links.parse_links(c.host_config.get("Links")):
            try:
                other = self.get(link.name)
            except NotFound:
                raise PeerMissing("could not get container for %s" % link.name) from None
            if not other.running:
                raise PeerNotRunning(
                    "Cannot link to a non running container: /%s AS /%s/%s" % (other.name, c.name, link.alias)
                )
            if not bridge_only:
                continue
            ip = ((other.state.get("NetworkSettings") or {}).get("Networks") or {}).get("bridge", {}).get("IPAddress")
            if not ip:
                raise PeerNotRunning("Cannot link to /%s, as it does not belong to the default network" % other.name)
            env += links.link_env(c.name, link, ip, other.config.get("ExposedPorts") or {}, other.config.get("Env"))
            hosts += links.hosts_entries(link, other.id, other.name, ip)
        c.record["LinkEnv"], c.record["LinkHosts"] = env, hosts

    def sock_path(self, c: Container) -> str:
        return os.path.join(self.sock_dir, c.id[:24] + ".sock")

    def _mount_rootfs(self, c):
        images = self.images
        try:
            image = images.get(c.image_id)
        except EngineError:
            image = None
        if image is not None:
            path = images.mount_rootfs(c.id, image)
        else:
            path = images.rootfs.remount(c.id)
        if c.record.get("Rootfs") != path:
            c.record["Rootfs"] = path
            c.save_config()
        return path

    def _copy_up_volumes(self, c, rootfs_path):
        """Docker copies the image's content at a volume's path into a new, empty volume."""
        if copy_up_volumes(c.mounts, rootfs_path):
            c.save_config()

    # -- control -----------------------------------------------------------------------------
    def _send(self, c, obj, fds=()):
        ctl = c.control
        if ctl is None:
            return False
        try:
            channel.send(ctl, obj, fds)
            return True
        except OSError:
            return False

    def kill(self, c: Container, sig_value: str | int | None = None, manual: bool = True) -> None:
        try:
            sig = parse_signal(sig_value) if sig_value not in (None, "") else signal.SIGKILL
        except SignalError as exc:
            raise InvalidParameter(str(exc)) from None
        with c.lock:
            if not c.running:
                raise Conflict("cannot kill container: %s: container %s is not running" % (c.name, c.id))
            if manual and sig in _MANUAL_STOP_SIGNALS:
                c.state["ManuallyStopped"] = True
                c.save_state()
            self._send(c, {"op": "kill", "signal": sig})
            if c.state.get("Paused") and sig in _MANUAL_STOP_SIGNALS:
                self._thaw(c)
        self.emit(c, "kill", {"signal": str(sig)})

    def stop(self, c: Container, timeout: float | None = None, sig_value: str | int | None = None) -> bool:
        with c.lock:
            if c.status == "restarting":
                self._cancel_restart(c)
                c.state.update({"Status": "exited", "Restarting": False, "ManuallyStopped": True})
                c.save_state()
                c.cond.notify_all()
                return True
            if not c.running:
                return False
            c.state["ManuallyStopped"] = True
            c.save_state()
            seq = c.exit_seq
        try:
            sig = parse_signal(sig_value or c.config.get("StopSignal") or "SIGTERM")
        except SignalError as exc:
            raise InvalidParameter(str(exc)) from None
        if timeout is None:
            timeout = c.config.get("StopTimeout")
        timeout = 10 if timeout is None else int(timeout)
        if timeout < 0:
            timeout = None  # -1: wait forever
        with c.lock:
            if c.running:
                self._send(c, {"op": "kill", "signal": sig})
                if c.state.get("Paused"):
                    self._thaw(c)
        self.emit(c, "kill", {"signal": str(sig)})
        if not self._wait_exit(c, seq, timeout):
            with c.lock:
                if c.running:
                    self._send(c, {"op": "kill", "signal": signal.SIGKILL})
            self.emit(c, "kill", {"signal": str(int(signal.SIGKILL))})
            if not self._wait_exit(c, seq, KILL_WAIT):
                raise SystemFailure("container %s did not stop after SIGKILL" % c.id[:12])
        self.emit(c, "stop")
        return True

    def _wait_exit(self, c, seq, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        with c.lock:
            while c.exit_seq == seq and c.running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                c.cond.wait(left if left is not None else 1.0)
            return True

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
        with c.lock:
            if not c.running:
                raise Conflict("Container %s is not running" % c.id)
            if c.state.get("Paused"):
                raise Conflict("Container %s is already paused" % c.id)
            cg = cgroups.Cgroup.from_dict(c.state.get("Cgroup"))
            try:
                cg.freeze(True)
            except OSError as exc:
                raise SystemFailure("cannot pause container %s: %s" % (c.id[:12], exc)) from None
            c.state.update({"Paused": True, "Status": "paused"})
            c.save_state()
        self.emit(c, "pause")

    def unpause(self, c: Container) -> None:
        with c.lock:
            if not c.state.get("Paused") or not c.running:
                raise Conflict("Container %s is not paused" % c.id)
            self._thaw(c)
        self.emit(c, "unpause")

    def _thaw(self, c):
        cg = cgroups.Cgroup.from_dict(c.state.get("Cgroup"))
        try:
            cg.freeze(False)
        except OSError as exc:
            raise SystemFailure("cannot unpause container %s: %s" % (c.id[:12], exc)) from None
        c.state.update({"Paused": False, "Status": "running"})
        c.save_state()

    def resize(self, c: Container, h: int, w: int) -> None:
        with c.lock:
            if not c.running:
                raise Conflict("Container %s is not running" % c.id)
            self._send(c, {"op": "resize", "h": int(h or 0), "w": int(w or 0)})

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

    # -- attach -------------------------------------------------------------------------------
    def attach_socket(self, c: Container, opts: dict) -> socket.socket:
        """A stream socket wired to the container's stdio: now if it runs, else at its next start."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with c.lock:
            if c.removing or c.removed:
                mine.close()
                theirs.close()
                raise Conflict("container %s is being removed" % c.id)
            if c.running and c.control is not None:
                ok = self._send(c, dict(opts, op="attach"), [theirs.fileno()])
                theirs.close()
                if not ok:
                    mine.close()
                    raise SystemFailure("cannot attach: the container's supervisor is not reachable")
            else:
                c.pending_attach.append((theirs, dict(opts)))
        self.emit(c, "attach")
        return mine

    # -- wait ---------------------------------------------------------------------------------
    def wait(self, c: Container, condition: str = "not-running", gone: Callable[[], bool] | None = None) -> int | None:
        """Block until `condition`; -> exit code. `gone()` True aborts (client left) -> None."""
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter("invalid condition: %s" % condition)
        with c.lock:
            seq = c.exit_seq
            while True:
                if condition == "removed" and c.removed:
                    return c.state.get("ExitCode", 0)
                if condition == "not-running" and not c.running and c.status != "restarting" and not c.removing:
                    return c.state.get("ExitCode", 0)
                if condition == "next-exit" and c.exit_seq != seq:
                    return c.state.get("ExitCode", 0)
                if condition == "not-running" and c.removed:
                    return c.state.get("ExitCode", 0)
                c.cond.wait(0.5)
                if gone is not None and gone():
                    return None

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
                self._send(c, {"op": "kill", "signal": signal.SIGKILL})
                if c.state.get("Paused"):
                    try:
                        self._thaw(c)
                    except EngineError:
                        pass
            if not self._wait_exit(c, seq, KILL_WAIT):
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


def _netns_gone(pid):
    """The process has no network namespace left: it exited (a zombie's ns links are gone too)."""
    return not os.path.exists("/proc/%d/ns/net" % pid)


def _write_in_place(path, text):
    """Rewrite without replacing the inode: the file is bind-mounted into the container."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
