"""The driver interface every driver implements, its flag type and the machine states.

A driver brings a host into existence and reports where it is; provisioning (engine, certs,
services) is done elsewhere, over SSH, the same way for every driver.
"""

import dataclasses
import enum
import os


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

    def __str__(self):
        return self.value


@dataclasses.dataclass
class Flag:
    """A driver's create flag; `name` is the long option without dashes (prefixed by the driver's name)."""

    name: str
    help: str
    default: object = None
    envvar: str | None = None
    type: type = str
    multiple: bool = False
    is_flag: bool = False

    @property
    def key(self):
        return self.name.replace("-", "_")


class Driver:
    """Base driver. Subclasses set `name`, list `flags`, and override what they support."""

    name = "base"
    flags: list = []
    # Drivers that only record an existing engine (none) skip SSH and provisioning.
    provisions = True

    def __init__(self, machine_name, machine_dir, config=None):
        self.machine_name = machine_name
        self.machine_dir = machine_dir
        self.config = dict(config or {})

    # -- configuration --------------------------------------------------------
    def set_config_from_flags(self, options):
        """options: dict keyed by Flag.key with values already parsed by the CLI."""

    def to_config(self):
        return dict(self.config)

    def path(self, name):
        return os.path.join(self.machine_dir, name)

    # -- lifecycle --------------------------------------------------------------
    def pre_create_check(self):
        """Raise any DockyardError when creation cannot work; the CLI exits 3."""

    def create(self):
        """Bring the host into existence (and running)."""

    def remove(self):
        """Delete everything the driver made. Must succeed when called again."""

    def start(self):
        from dockyard.provisioner.core.errors import NotSupported

        raise NotSupported(self.name, "start")

    def stop(self):
        from dockyard.provisioner.core.errors import NotSupported

        raise NotSupported(self.name, "stop")

    def kill(self):
        from dockyard.provisioner.core.errors import NotSupported

        raise NotSupported(self.name, "kill")

    def restart(self):
        from dockyard.provisioner.core.errors import NotSupported

        raise NotSupported(self.name, "restart")

    def state(self):
        return State.RUNNING

    # -- addresses ----------------------------------------------------------------
    def ip(self):
        """The host's address as clients reach it."""
        from dockyard.provisioner.core.errors import DriverError

        raise DriverError(f'driver "{self.name}" does not know the machine\'s IP address')

    def engine_port(self):
        return int(self.config.get("EnginePort") or 2376)

    def url(self):
        return f"tcp://{_host_for_url(self.ip())}:{self.engine_port()}"

    def ssh_host(self):
        return self.ip()

    def ssh_port(self):
        return int(self.config.get("SSHPort") or 22)

    def ssh_user(self):
        return self.config.get("SSHUser") or "root"

    def ssh_key_path(self):
        """Absolute path of the private key, or None."""
        key = self.config.get("SSHKeyPath")
        if not key:
            return None
        return key if os.path.isabs(key) else self.path(key)

    def ensure_ssh_key(self, filename="id_ed25519"):
        """A per-machine ed25519 key pair in the machine dir (for drivers that make the host).
        Returns the public key line; SSHKeyPath is stored relative to the machine dir."""
        from dockyard.provisioner.core.ssh import generate_keypair

        path = self.path(filename)
        if os.path.exists(path):
            with open(path + ".pub") as f:
                public = f.read().strip()
        else:
            public = generate_keypair(path, comment=f"dockyard-{self.machine_name}")
        self.config["SSHKeyPath"] = filename
        return public

    def ssh_target(self):
        """Where and how to reach the host over SSH; the host key is pinned in the machine dir."""
        from dockyard.provisioner.core.ssh import SSHTarget  # local import: drivers stay light to import

        return SSHTarget(
            host=self.ssh_host(),
            port=self.ssh_port(),
            user=self.ssh_user(),
            key_path=self.ssh_key_path(),
            host_key_path=self.path("ssh_host_key"),
            machine=self.machine_name,
        )


def _host_for_url(ip):
    return f"[{ip}]" if ":" in ip else ip
