"""The driver interface every driver implements, its flag and settings types, and the machine states.

A driver brings a host into existence and reports where it is; provisioning (engine, certs,
services) is done elsewhere, over SSH, the same way for every driver.

What every driver must do (create, remove, state, ip) is abstract. The power verbs (start, stop, kill,
restart) are optional and declared in `capabilities`; a driver that declares one must implement it, and
one that does not declare it answers `NotSupported` with Docker Machine's wording. Drivers report progress
through `progress`, a callable the machine layer hands them (the CLI prints it), never with print.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from dockyard.provisioner.core.errors import DriverError, NotSupported
from dockyard.provisioner.core.ssh_target import SSHTarget

Progress = Callable[[str], None]
"""Where a driver's progress lines go (one line per call)."""

# Progress of a driver no one handed a channel to: nothing is printed; visible with logging configured.
_unheard = logging.getLogger("dockyard.drivers.progress").info


class State(str, enum.Enum):
    NONE = ""
    RUNNING = "Running"
    PAUSED = "Paused"
    SAVED = "Saved"
    STOPPED = "Stopped"
    STOPPING = "Stopping"
    STARTING = "Starting"
    ERROR = "Error"
    TIMEOUT = "Timeout"

    def __str__(self) -> str:
        return self.value


class Capability(str, enum.Enum):
    """An optional operation; the value is the Driver method that performs it (and the verb in errors)."""

    START = "start"
    STOP = "stop"
    KILL = "kill"
    RESTART = "restart"
    RESIZE = "resize"  # `dockyard set`: a stopped machine's CPUs, memory and disk


POWER = frozenset({Capability.START, Capability.STOP, Capability.KILL, Capability.RESTART})
"""Every power verb: what a driver that runs its own VMs or cloud nodes supports."""


@dataclasses.dataclass
class Flag:
    """A driver's create flag; `name` is the long option without dashes (prefixed by the driver's name)."""

    name: str
    help: str
    default: Any = None
    envvar: str | None = None
    type: type = str
    multiple: bool = False
    is_flag: bool = False

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def value(self, options: Mapping[str, Any]) -> Any:
        """This flag's value in options (keyed by `key`), or its default when unset or empty."""
        v = options.get(self.key)
        if v in (None, "", ()):
            v = self.default
        if self.multiple:
            return list(v or ())
        if self.is_flag:
            return bool(v)
        return v


def flag_values(flags: Sequence[Flag], options: Mapping[str, Any]) -> dict[str, Any]:
    """{Flag.key: value} for every flag, defaults applied: a driver's defaults live only in its flags."""
    return {f.key: f.value(options) for f in flags}


def setting(config_key: str, flag: str | None = None, derived: Any = dataclasses.MISSING) -> Any:
    """A settings field stored as config_key in config.json, read from the flag named flag (a Flag.key).
    derived: the placeholder of a field that __post_init__ computes from other fields (no flag, not given)."""
    return dataclasses.field(default=derived, metadata={"config_key": config_key, "flag": flag})


SettingsT = TypeVar("SettingsT", bound="Settings")


@dataclasses.dataclass
class Settings:
    """Base of a driver's typed settings. Fields are declared with `setting()`, in config.json order."""

    @classmethod
    def from_flags(cls: type[SettingsT], values: Mapping[str, Any], prefix: str = "", **fixed: Any) -> SettingsT:
        """Fields that name a flag take the value of flag `prefix + flag` (see flag_values); fields without a
        flag come from `fixed`. Conversions and checks belong in the subclass's __post_init__."""
        kwargs = {
            f.name: values[prefix + f.metadata["flag"]] for f in dataclasses.fields(cls) if f.metadata.get("flag")
        }
        return cls(**kwargs, **fixed)

    def to_config(self) -> dict[str, Any]:
        """{config key: value} in field order: what the driver's section of config.json records."""
        return {f.metadata["config_key"]: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls: type[SettingsT], config: Mapping[str, Any], **changed: Any) -> SettingsT:
        """The settings config.json recorded (to_config's inverse), with `changed` fields replaced; checked again
        by the subclass's __post_init__, so a change is validated like a create flag."""
        kwargs = {
            f.name: config[f.metadata["config_key"]]
            for f in dataclasses.fields(cls)
            if f.metadata["config_key"] in config
        }
        kwargs.update(changed)
        missing = [
            f.metadata["config_key"]
            for f in dataclasses.fields(cls)
            if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise DriverError(f"config.json lacks {', '.join(missing)} (written by an older dockyard?)")
        return cls(**kwargs)


class Driver(abc.ABC):
    """Base driver. Subclasses set `name`, list `flags`, declare `capabilities` and implement the abstracts."""

    name: ClassVar[str] = "base"
    flags: ClassVar[list[Flag]] = []
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # Drivers that only record an existing engine (none) skip SSH and provisioning.
    provisions: ClassVar[bool] = True

    def __init__(
        self,
        machine_name: str,
        machine_dir: str,
        config: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.machine_name = machine_name
        self.machine_dir = machine_dir
        self.config: dict[str, Any] = dict(config or {})
        self.progress: Progress = progress or _unheard

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The declaration and the methods must agree, so the declared set is what the driver really does.
        for cap in Capability:
            implemented = getattr(cls, cap.value) is not getattr(Driver, cap.value)
            if implemented != (cap in cls.capabilities):
                state = "implements" if implemented else "does not implement"
                raise TypeError(f"{cls.__name__} {state} {cap.value}() but its capabilities say otherwise")

    # -- configuration --------------------------------------------------------
    @abc.abstractmethod
    def set_config_from_flags(self, options: Mapping[str, Any]) -> None:
        """options: dict keyed by Flag.key with values already parsed by the CLI (missing ones: defaults)."""

    def to_config(self) -> dict[str, Any]:
        return dict(self.config)

    def path(self, name: str) -> str:
        return os.path.join(self.machine_dir, name)

    # -- lifecycle --------------------------------------------------------------
    def pre_create_check(self) -> None:
        """Raise any DockyardError when creation cannot work; the CLI exits 3. (Default: nothing to check.)"""

    @abc.abstractmethod
    def create(self) -> None:
        """Bring the host into existence (and running)."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Delete everything the driver made. Must succeed when called again."""

    @abc.abstractmethod
    def state(self) -> State:
        """The host's state as the driver sees it."""

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability) -> None:
        """NotSupported (Docker Machine's wording) unless the driver declares capability."""
        if not self.supports(capability):
            raise NotSupported(self.name, capability.value)

    def start(self) -> None:
        self.require(Capability.START)

    def stop(self) -> None:
        self.require(Capability.STOP)

    def kill(self) -> None:
        self.require(Capability.KILL)

    def restart(self) -> None:
        self.require(Capability.RESTART)

    def resize(self, cpus: int | None = None, memory_mb: int | None = None, disk_mb: int | None = None) -> None:
        """Give a stopped machine new CPUs, memory (MB) or disk size (MB; grows only) and record them in config."""
        self.require(Capability.RESIZE)

    # -- first boot ---------------------------------------------------------------
    def first_boot_host(self) -> tuple[str, str] | None:
        """(init system, python3 path) of a guest that installs files given to set_first_boot on its first boot
        (so the engine starts during the boot), or None: the driver cannot (the default)."""
        return None

    def set_first_boot(self, files: list[tuple[str, bytes, int]], command: str) -> None:
        """Files (remote path, bytes, mode) the guest installs on its first boot, then runs command (as root).
        Called before create() and only when first_boot_host() is not None."""
        raise NotSupported(self.name, "set_first_boot")

    # -- addresses ----------------------------------------------------------------
    @abc.abstractmethod
    def ip(self) -> str:
        """The host's address as clients reach it."""

    def engine_port(self) -> int:
        return int(self.config.get("EnginePort") or 2376)

    def url(self) -> str:
        return f"tcp://{host_for_url(self.ip())}:{self.engine_port()}"

    def ssh_host(self) -> str:
        return self.ip()

    def ssh_port(self) -> int:
        return int(self.config.get("SSHPort") or 22)

    def ssh_user(self) -> str:
        return str(self.config.get("SSHUser") or "root")

    def ssh_key_path(self) -> str | None:
        """Absolute path of the private key, or None."""
        key = self.config.get("SSHKeyPath")
        if not key:
            return None
        return key if os.path.isabs(key) else self.path(key)

    def ensure_ssh_key(self, filename: str = "id_ed25519") -> str:
        """A per-machine ed25519 key pair in the machine dir (for drivers that make the host).
        Returns the public key line; SSHKeyPath is stored relative to the machine dir."""
        from dockyard.provisioner.core.ssh_keys import generate_keypair  # lazy: loads paramiko

        path = self.path(filename)
        if os.path.exists(path):
            with open(path + ".pub") as f:
                public = f.read().strip()
        else:
            public = generate_keypair(path, comment=f"dockyard-{self.machine_name}")
        self.config["SSHKeyPath"] = filename
        return public

    def ssh_target(self) -> SSHTarget:
        """Where and how to reach the host over SSH; the host key is pinned in the machine dir."""
        return SSHTarget(
            host=self.ssh_host(),
            port=self.ssh_port(),
            user=self.ssh_user(),
            key_path=self.ssh_key_path(),
            host_key_path=self.path("ssh_host_key"),
            machine=self.machine_name,
        )


def host_for_url(ip: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


__all__ = [
    "POWER",
    "Capability",
    "Driver",
    "Flag",
    "Progress",
    "Settings",
    "State",
    "flag_values",
    "host_for_url",
    "setting",
]
