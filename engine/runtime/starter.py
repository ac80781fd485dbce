"""Starting a container's process: its rootfs and /etc files, the containers it needs (--link,
--network container:), the supervisor spec handed to the fork server, and the start handshake with
the new supervisor (netns -> network connect -> go -> started | failed) that ends in the running state."""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Callable

from dockyard.engine.errors import Conflict, EngineError, InvalidParameter, NotFound, SystemFailure
from dockyard.engine.images.store import ImageStore
from dockyard.engine.network.manager import NetworkManager
from dockyard.engine.runtime import cgroups, channel, links, userns
from dockyard.engine.runtime import spec as specmod
from dockyard.engine.runtime.copyup import copy_up_volumes
from dockyard.engine.runtime.forkserver import ForkServer, ForkServerError
from dockyard.engine.runtime.monitor import Monitor
from dockyard.engine.runtime.netsettings import minimal_settings
from dockyard.engine.runtime.store import ZERO_TIME, Container
from dockyard.engine.timefmt import rfc3339nano_ns

log = logging.getLogger("dockyard.engine")

START_TIMEOUT = 60.0


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


class ContainerStarter:
    """Starts containers' processes; the ContainerManager decides when (start, restart, restart policies)."""

    def __init__(
        self,
        forkserver: ForkServer,
        images: ImageStore,
        network: NetworkManager,
        monitor: Monitor,
        cgroup_parent: str,
        layout: cgroups.Layout,
        sock_dir: str,
        idmap: userns.IdMap | None,
        lookup: Callable[[str], Container],
        emit: Callable[[Container, str], None],
        disconnect: Callable[[Container, dict], None],
    ) -> None:
        self.forkserver = forkserver
        self.images = images
        self.network = network
        self.monitor = monitor  # watches each started container's supervisor channel
        self.cgroup_parent = cgroup_parent
        self.layout = layout
        self.sock_dir = sock_dir
        self.idmap = idmap
        self.lookup = lookup  # a container by name or ID (NotFound): the peers of --link, --network container:
        self.emit = emit
        self.disconnect = disconnect  # undoes network.connect when the process fails to start

    def network_mode(self, hc: dict) -> str:
        """bridge, host, none, container or a user-defined network's mode."""
        mode = hc.get("NetworkMode") or "bridge"
        if mode in ("default", "bridge"):
            return "bridge"
        if mode in ("host", "none"):
            return mode
        return self.network.network_mode(hc)

    def write_etc_files(self, c: Container, settings: dict | None) -> None:
        """hostname, hosts and resolv.conf in the container's directory (bind-mounted at start)."""
        cfg = c.config
        hostname = cfg.get("Hostname") or c.id[:12]
        _write_in_place(os.path.join(c.dir, "hostname"), hostname + "\n")
        _write_in_place(os.path.join(c.dir, "hosts"), self.network.hosts_file(c, settings))
        _write_in_place(os.path.join(c.dir, "resolv.conf"), self.network.resolv_conf(c))
        if userns.uses_userns(c.host_config, self.idmap):
            assert self.idmap is not None
            for name in ("hostname", "hosts", "resolv.conf"):  # the container's root may edit them
                os.chown(os.path.join(c.dir, name), *self.idmap.root)

    def spawn(self, c: Container) -> None:
        """Start `c`'s process (the caller holds c.lock); StartFailed or SystemFailure if it cannot run."""
        t0 = time.monotonic()
        mode = self.network_mode(c.host_config)
        net = self.network
        rootfs_path = self._mount_rootfs(c)
        self._copy_up_volumes(c, rootfs_path)
        if not os.path.exists(os.path.join(c.dir, "hosts")):
            self.write_etc_files(c, None)
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
                        self.disconnect(c, settings)
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
            other = self.lookup(ref)
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
                other = self.lookup(link.name)
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


def _netns_gone(pid):
    """The process has no network namespace left: it exited (a zombie's ns links are gone too)."""
    return not os.path.exists("/proc/%d/ns/net" % pid)


def _write_in_place(path, text):
    """Rewrite without replacing the inode: the file is bind-mounted into the container."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
