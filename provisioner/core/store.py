"""Machines on disk: the store layout, config.json, locks, store-relative paths.

Layout under the store root (default ~/.dockyard):
    certs/                 CA and client pair shared by every machine
    machines/NAME/         config.json, SSH key, copies of ca/cert/key.pem, server cert and key,
                           pinned SSH host key, driver files
    cache/                 downloaded or built artefacts (engine bundle, images)
Paths inside config.json are relative to the store root so a store can be moved.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

from dockyard.provisioner.core.errors import InvalidHostname, MachineAlreadyExists, MachineNotExist, StoreError
from dockyard.provisioner.core.files import atomic_write, file_lock

CONFIG_VERSION = 3
DEFAULT_STORE = "~/.dockyard"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$")


def default_store_path(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("DOCKYARD_STORAGE_PATH") or os.path.expanduser(DEFAULT_STORE)


def validate_name(name: str) -> str:
    if not name or not NAME_RE.match(name) or len(name) > 253:
        raise InvalidHostname(name)
    return name


class Store:
    """The machine store rooted at `path`."""

    def __init__(self, path: str | None = None) -> None:
        self.path = os.path.abspath(os.path.expanduser(path or default_store_path()))
        self.certs_dir = os.path.join(self.path, "certs")
        self.machines_dir = os.path.join(self.path, "machines")
        self.cache_dir = os.path.join(self.path, "cache")

    # -- layout -------------------------------------------------------------
    def ensure(self) -> Store:
        for d in (self.path, self.certs_dir, self.machines_dir, self.cache_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        return self

    def machine_dir(self, name: str) -> str:
        return os.path.join(self.machines_dir, name)

    def rel(self, path: str) -> str:
        """A path as stored in config.json: relative to the store root when inside it."""
        if not path:
            return path
        path = os.path.abspath(path)
        if path == self.path or path.startswith(self.path + os.sep):
            return os.path.relpath(path, self.path)
        return path

    def abs(self, path: str) -> str:
        """Resolve a path read from config.json."""
        if not path:
            return path
        return path if os.path.isabs(path) else os.path.join(self.path, path)

    @contextlib.contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """Store-wide lock: CA creation, machine creation and removal."""
        self.ensure()
        with file_lock(os.path.join(self.path, ".lock"), timeout, "the store"):
            yield

    @contextlib.contextmanager
    def machine_lock(self, name: str, timeout: float = 600.0) -> Iterator[None]:
        """Per-machine lock so two commands never change the same machine at once."""
        path = os.path.join(self.machine_dir(name), ".lock")
        if not os.path.isdir(self.machine_dir(name)):
            raise MachineNotExist(name)
        with file_lock(path, timeout, f'machine "{name}"'):
            yield

    # -- machines -----------------------------------------------------------
    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.machine_dir(name), "config.json"))

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.machines_dir)
        except FileNotFoundError:
            return []
        return [n for n in entries if not n.startswith(".") and os.path.isdir(os.path.join(self.machines_dir, n))]

    def reserve(self, name: str) -> str:
        """Create the machine's directory; fails if the machine exists. Race-free (mkdir is atomic)."""
        validate_name(name)
        self.ensure()
        d = self.machine_dir(name)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            raise MachineAlreadyExists(name) from None
        return d

    def load(self, name: str) -> dict[str, Any]:
        path = os.path.join(self.machine_dir(name), "config.json")
        try:
            with open(path) as f:
                config = json.load(f)
        except FileNotFoundError:
            raise MachineNotExist(name) from None
        except (OSError, ValueError) as e:
            raise StoreError(f'config of machine "{name}" is unreadable ({path}): {e}') from None
        version = config.get("ConfigVersion", 0)
        if version > CONFIG_VERSION:
            raise StoreError(f'config version of machine "{name}" is from the future -- you should upgrade dockyard')
        return config

    def save(self, name: str, config: Mapping[str, Any]) -> None:
        config = dict(config)
        config["ConfigVersion"] = CONFIG_VERSION
        config["Name"] = name
        atomic_write(
            os.path.join(self.machine_dir(name), "config.json"),
            json.dumps(config, indent=4, sort_keys=False) + "\n",
            durable=True,
        )

    def remove(self, name: str) -> None:
        d = self.machine_dir(name)
        if not os.path.isdir(d):
            raise MachineNotExist(name)
        # Rename first so a half-removed machine never looks like a live one.
        trash = os.path.join(self.machines_dir, f".removing-{name}-{os.getpid()}")
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
