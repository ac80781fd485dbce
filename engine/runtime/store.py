"""Containers on disk: data-root/containers/<id>/{config.json,state.json} and the in-memory
Container object the rest of the engine uses.

config.json holds what create decided (Config, HostConfig, mounts, paths); state.json the
lifecycle (Status, Pid, ExitCode, ...). Both are replaced atomically (temp + rename, no fsync:
a lost last write after a power cut is recovered from exit.json or reported as exit 255).
"""

import json
import os
import threading
import time

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.timefmt import rfc3339nano_ns

ZERO_TIME = "0001-01-01T00:00:00Z"


def read_json(path, default=None):
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def new_state():
    return {
        "Status": "created",
        "Pid": 0,
        "ExitCode": 0,
        "Error": "",
        "OOMKilled": False,
        "StartedAt": ZERO_TIME,
        "FinishedAt": ZERO_TIME,
        "RestartCount": 0,
        "ManuallyStopped": False,
        "Run": None,
        "Cgroup": None,
        "NetworkSettings": None,
        "StartedNs": 0,
        "FinishedNs": 0,
        "Paused": False,
        "Restarting": False,
        "HasBeenStarted": False,
    }


class Container:
    """One container. Fields mirror config.json; `state` mirrors state.json.

    Locking: `lock` serialises lifecycle operations (start/stop/rm/...); `cond` (same lock)
    is notified on every state change, for wait/logs-follow.
    """

    def __init__(self, root, record, state=None):
        self.root = root
        self.record = record
        self.state = state or new_state()
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.control = None  # engine-side connection to the supervisor
        self.pending_attach = []  # (socket end for the supervisor, options) until start
        self.exec_ids = []
        self.removed = False
        self.removing = False
        self.exit_seq = 0  # bumped at every exit (wait next-exit)
        self.start_seq = 0
        self.restart_timer = None
        # Cleared from an exit until its network endpoints are released (in the after-exit thread): a start or
        # a stop waits for it, so a restart never races the old run's veth deletion (the same names are reused).
        self.network_released = threading.Event()
        self.network_released.set()

    # -- identity ------------------------------------------------------------------------
    @property
    def id(self):
        return self.record["Id"]

    @property
    def name(self):
        return self.record["Name"].lstrip("/")

    @property
    def dir(self):
        return os.path.join(self.root, self.id)

    @property
    def config(self):
        return self.record["Config"]

    @property
    def host_config(self):
        return self.record["HostConfig"]

    @property
    def image_id(self):
        return self.record["Image"]

    @property
    def mounts(self):
        """[{Type, Name, Source, Destination, RW, ...}] as inspect's Mounts (for docker cp)."""
        return list(self.record.get("MountPoints") or [])

    @property
    def rootfs(self):
        return self.record.get("Rootfs")

    @property
    def pid(self):
        return self.state.get("Pid") or 0 if self.state.get("Status") in ("running", "paused") else 0

    @property
    def status(self):
        return self.state.get("Status", "created")

    @property
    def running(self):
        return self.status in ("running", "paused")

    @property
    def tty(self):
        return bool(self.config.get("Tty"))

    @property
    def log_path(self):
        return os.path.join(self.dir, self.id + "-json.log")

    @property
    def exit_file(self):
        return os.path.join(self.dir, "exit.json")

    # -- persistence -----------------------------------------------------------------------
    def save_config(self):
        atomic_write_json(os.path.join(self.dir, "config.json"), self.record, durable=False, compact=True)

    def save_state(self):
        atomic_write_json(os.path.join(self.dir, "state.json"), self.state, durable=False, compact=True)

    @classmethod
    def load(cls, root, cid):
        record = read_json(os.path.join(root, cid, "config.json"))
        if not record or record.get("Id") != cid:
            return None
        state = new_state()
        state.update(read_json(os.path.join(root, cid, "state.json"), {}) or {})
        return cls(root, record, state)


def now_text():
    return rfc3339nano_ns(time.time_ns())
