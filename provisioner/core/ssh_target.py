"""Where and how to reach a host over SSH (no paramiko here: drivers build targets without loading it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SSHTarget:
    host: str
    port: int = 22
    user: str = "root"
    key_path: str | None = None
    host_key_path: str | None = None  # pinned host key file ("keytype base64"); None = no pinning
    machine: str = ""  # machine name, for messages

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        # The name paramiko (and OpenSSH) look a host up under: the port is part of it unless it is 22.
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def describe(self) -> str:
        return f'machine "{self.machine}" ({self.address})' if self.machine else f"host {self.address}"
