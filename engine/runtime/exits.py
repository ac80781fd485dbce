"""Exit handling, restart policies and live restore for the ContainerManager (a mixin: the
manager's state and helpers are used as they are)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from dockyard.engine.errors import EngineError
from dockyard.engine.runtime import channel
from dockyard.engine.runtime.store import Container, read_json
from dockyard.engine.timefmt import rfc3339nano_ns

if TYPE_CHECKING:
    from dockyard.engine.network.manager import NetworkManager

log = logging.getLogger("dockyard.engine")

RESTART_BASE_DELAY = 0.1
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 10.0  # a run this long resets the back-off, as dockerd


class ExitsMixin:
    # What the mixin uses of the ContainerManager it is part of, declared for readers and type checkers.
    root: str
    lock: threading.RLock
    containers: dict[str, Container]
    names: dict[str, str]
    network: NetworkManager

    if TYPE_CHECKING:

        def remove(self, c: Container, force: bool = False, volumes: bool = False, auto: bool = False) -> None: ...

        def _spawn_checked(self, c: Container) -> None: ...

    # -- exit handling -----------------------------------------------------------------------
    def _supervisor_gone(self, c, record, sock):
        """Monitor thread: the supervisor reported an exit, or its channel closed."""
        try:
            sock.close()
        except OSError:
            pass
        if record is None:
            record = read_json(c.exit_file)
            if not record or record.get("run") != c.state.get("Run"):
                record = {
                    "ExitCode": 255,
                    "FinishedAt": rfc3339nano_ns(time.time_ns()),
                    "finished_ns": time.time_ns(),
                    "OOMKilled": False,
                    "Error": "the container's supervisor exited unexpectedly",
                }
        self._record_exit(c, record)

    def _record_exit(self, c, record, after_restore=False):
        with c.lock:
            if c.control is not None:
                try:
                    c.control.close()
                except OSError:
                    pass
            c.control = None
            settings = c.state.get("NetworkSettings")
            if settings is not None:
                c.network_released.clear()
            finished = int(record.get("finished_ns") or time.time_ns())
            c.state.update(
                {
                    "Status": "exited",
                    "Pid": 0,
                    "ExitCode": int(record.get("ExitCode", 255)),
                    "OOMKilled": bool(record.get("OOMKilled")),
                    "Error": record.get("Error", ""),
                    "FinishedAt": rfc3339nano_ns(finished),
                    "FinishedNs": finished,
                    "Paused": False,
                    "Restarting": False,
                    "NetworkSettings": None,
                }
            )
            try:
                c.save_state()
            except OSError:
                pass
            try:
                os.unlink(c.exit_file)
            except OSError:
                pass
            c.exit_seq += 1
            c.cond.notify_all()
            code = c.state["ExitCode"]
        if record.get("OOMKilled"):
            self.emit(c, "oom")
        self.emit(c, "die", {"exitCode": str(code)})
        threading.Thread(
            target=self._after_exit, args=(c, settings, after_restore), name="exit-%s" % c.id[:12], daemon=True
        ).start()

    def _after_exit(self, c, settings, after_restore):
        t0 = time.monotonic()
        try:
            try:
                if settings is not None:
                    self._disconnect(c, settings)
            finally:
                c.network_released.set()
            if c.removed or c.removing:
                return
            if c.host_config.get("AutoRemove"):
                self.remove(c, force=True, volumes=True, auto=True)
                log.debug("auto-removed %s in %.1f ms", c.id[:12], (time.monotonic() - t0) * 1000)
                return
            delay = self._restart_delay(c)
            if delay is not None:
                self._schedule_restart(c, delay)
        except Exception:
            log.exception("after-exit handling of %s failed", c.id[:12])

    def _disconnect(self, c, settings):
        try:
            self.network.disconnect(c, settings)
        except Exception as exc:
            log.warning("network disconnect of %s failed: %s", c.id[:12], exc)

    def _restart_delay(self, c):
        """Seconds until the policy restarts the container, or None for no restart."""
        policy = c.host_config.get("RestartPolicy") or {}
        name = policy.get("Name") or "no"
        st = c.state
        if name == "no" or st.get("ManuallyStopped"):
            return None
        code = st.get("ExitCode", 0)
        if name == "on-failure":
            limit = int(policy.get("MaximumRetryCount") or 0)
            if code == 0 or (limit and st.get("RestartCount", 0) >= limit):
                return None
        elif name not in ("always", "unless-stopped"):
            return None
        ran = (st.get("FinishedNs", 0) - st.get("StartedNs", 0)) / 1e9
        streak = 0 if ran >= RESTART_RESET_AFTER else int(st.get("RestartStreak", 0)) + 1
        st["RestartStreak"] = streak
        return min(RESTART_MAX_DELAY, RESTART_BASE_DELAY * (2 ** max(0, streak - 1))) if streak else 0.0

    def _schedule_restart(self, c, delay):
        with c.lock:
            if c.removing or c.removed or c.running:
                return
            c.state.update({"Status": "restarting", "Restarting": True})
            c.save_state()
            timer = threading.Timer(delay, self._policy_restart, args=(c,))
            timer.daemon = True
            c.restart_timer = timer
            timer.start()

    def _policy_restart(self, c):
        with c.lock:
            c.restart_timer = None
            if c.removing or c.removed or c.running or c.status != "restarting":
                return
            c.state["RestartCount"] = int(c.state.get("RestartCount", 0)) + 1
            try:
                self._spawn(c)
            except Exception as exc:
                log.warning("restarting %s failed: %s", c.id[:12], exc)
                c.state.update(
                    {
                        "Status": "exited",
                        "Restarting": False,
                        "Error": exc.message if isinstance(exc, EngineError) else str(exc),
                    }
                )
                c.save_state()
                c.cond.notify_all()
                return
        self.emit(c, "restart")

    def _cancel_restart(self, c):
        timer, c.restart_timer = c.restart_timer, None
        if timer is not None:
            timer.cancel()
        if c.status == "restarting":
            c.state.update({"Status": "exited", "Restarting": False})

    # -- engine start / stop -----------------------------------------------------------------
    def restore(self) -> tuple[list[Container], list[Container]]:
        """Load every container; reconnect to live supervisors; settle the ones that died."""
        loaded = []
        for cid in sorted(os.listdir(self.root)):
            c = Container.load(self.root, cid)
            if c is None:
                continue
            with self.lock:
                self.containers[cid] = c
                self.names[c.name] = cid
            loaded.append(c)
        died = []
        for c in loaded:
            if c.status in ("running", "paused"):
                if not self._reconnect(c):
                    died.append(c)
            elif c.status in ("restarting", "removing"):
                c.state.update({"Status": "exited", "Restarting": False})
        try:
            self.network.reconcile([c.id for c in loaded if c.running])
        except Exception:
            log.exception("network reconcile failed")
        return loaded, died

    def _reconnect(self, c):
        path = c.state.get("Sock") or self.sock_path(c)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(5.0)
            sock.connect(path)
            channel.send(sock, {"op": "state"})
            reply = channel.recv(sock)
        except (OSError, ValueError, channel.ChannelClosed):
            sock.close()
            return False
        if not reply.get("running"):
            sock.close()
            return False
        sock.settimeout(None)
        c.control = sock
        self.monitor.add(c, sock)
        log.info("re-attached to running container %s (pid %s)", c.id[:12], reply.get("pid"))
        return True

    def settle_dead(self, died: list[Container]) -> None:
        """Containers whose supervisor is gone: the recorded exit, or 255 (host reboot, crash)."""
        for c in died:
            record = read_json(c.exit_file)
            if not record or record.get("run") != c.state.get("Run"):
                record = {"ExitCode": 255, "finished_ns": time.time_ns(), "OOMKilled": False}
            self._record_exit(c, record, after_restore=True)

    def start_policies(self, loaded: list[Container], died: list[Container]) -> None:
        """At engine start: --rm leftovers are removed, restart policies applied."""
        died_ids = {c.id for c in died}
        for c in loaded:
            if c.removed or c.running or c.id in died_ids:
                continue  # the dead ones went through _record_exit already
            if c.host_config.get("AutoRemove") and c.state.get("HasBeenStarted"):
                try:
                    self.remove(c, force=True, volumes=True, auto=True)
                except EngineError:
                    pass
                continue
            policy = (c.host_config.get("RestartPolicy") or {}).get("Name") or "no"
            manual = c.state.get("ManuallyStopped")
            if policy == "always" or (policy == "unless-stopped" and not manual):
                if not c.state.get("HasBeenStarted"):
                    continue
                try:
                    with c.lock:
                        self._spawn_checked(c)
                except Exception as exc:
                    log.warning("restart policy: starting %s failed: %s", c.id[:12], exc)
