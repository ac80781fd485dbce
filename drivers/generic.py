"""The `generic` driver: an existing host reached over SSH; dockyard only provisions it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from collections.abc import Mapping
from typing import Any

from dockyard.drivers.base import Capability, Driver, Flag, Settings, State, flag_values, setting
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError


@dataclasses.dataclass
class GenericSettings(Settings):
    ip_address: str = setting("IPAddress", flag="generic_ip_address")
    ssh_user: str = setting("SSHUser", flag="generic_ssh_user")
    ssh_port: int = setting("SSHPort", flag="generic_ssh_port")
    engine_port: int = setting("EnginePort", flag="generic_engine_port")
    user_ssh_key: str = setting("UserSSHKey", flag="generic_ssh_key")

    def __post_init__(self) -> None:
        if not self.ip_address:
            raise DriverError("generic driver requires the --generic-ip-address option")
        self.ssh_port, self.engine_port = int(self.ssh_port), int(self.engine_port)
        key = self.user_ssh_key
        self.user_ssh_key = os.path.abspath(os.path.expanduser(key)) if key else ""


class GenericDriver(Driver):
    name = "generic"
    capabilities = frozenset({Capability.RESTART})
    flags = [
        Flag("generic-ip-address", "IP address or host name of the host", envvar="GENERIC_IP_ADDRESS"),
        Flag("generic-ssh-user", "SSH user", default="root", envvar="GENERIC_SSH_USER"),
        Flag(
            "generic-ssh-key",
            "SSH private key path (default: a new key is made for the machine; "
            "it must then already be authorized on the host)",
            envvar="GENERIC_SSH_KEY",
        ),
        Flag("generic-ssh-port", "SSH port", default=22, type=int, envvar="GENERIC_SSH_PORT"),
        Flag("generic-engine-port", "Engine port", default=2376, type=int, envvar="GENERIC_ENGINE_PORT"),
    ]

    def set_config_from_flags(self, options: Mapping[str, Any]) -> None:
        self.config.update(GenericSettings.from_flags(flag_values(self.flags, options)).to_config())

    def pre_create_check(self) -> None:
        key = self.config.get("UserSSHKey")
        if key and not os.path.isfile(key):
            raise PreCreateCheckError(f"SSH key does not exist: {key}")
        for port_key in ("SSHPort", "EnginePort"):
            if not 0 < int(self.config[port_key]) < 65536:
                raise PreCreateCheckError(f"invalid port {self.config[port_key]}")
        try:
            socket.getaddrinfo(self.config["IPAddress"], None)
        except socket.gaierror as e:
            raise PreCreateCheckError(f'cannot resolve "{self.config["IPAddress"]}": {e}') from None

    def create(self) -> None:
        # Use a copy of the user's key so the machine dir is self-contained (store can move).
        key = self.config.get("UserSSHKey")
        if key:
            dest = self.path(os.path.basename(key))
            shutil.copyfile(key, dest)
            os.chmod(dest, 0o600)
            self.config["SSHKeyPath"] = os.path.basename(key)

    def ip(self) -> str:
        return self.config["IPAddress"]

    def state(self) -> State:
        # An existing host: reachable SSH port means Running.
        try:
            with socket.create_connection((self.ip(), self.ssh_port()), timeout=3):
                return State.RUNNING
        except OSError:
            return State.STOPPED

    def remove(self) -> None:
        """The host is not ours to delete; only the local record goes."""

    def restart(self) -> None:
        """Reboot the host over SSH (the only lifecycle verb an existing host supports)."""
        from dockyard.provisioner.core.ssh import SSHSession  # lazy: loads paramiko

        with SSHSession(self.ssh_target()) as s:
            s.run("(sleep 1; reboot) >/dev/null 2>&1 &", sudo=True, check=False)
