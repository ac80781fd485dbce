"""The `none` driver: records an engine URL that already exists; nothing is created or provisioned."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from dockyard.drivers.base import Driver, Flag, Settings, State, flag_values, setting
from dockyard.provisioner.core.errors import DriverError


@dataclasses.dataclass
class NoneSettings(Settings):
    url: str = setting("URL", flag="url")

    def __post_init__(self) -> None:
        self.url = str(self.url or "")
        if not self.url:
            raise DriverError("--url option is required for the none driver")
        parts = urlsplit(self.url)
        if parts.scheme not in ("tcp", "unix", "http", "https") or (parts.scheme != "unix" and not parts.hostname):
            raise DriverError(f'invalid --url "{self.url}": expected tcp://HOST:PORT')


class NoneDriver(Driver):
    name = "none"
    provisions = False
    flags = [Flag("url", "URL of the host when no driver is selected", envvar="NONE_URL")]

    def set_config_from_flags(self, options: Mapping[str, Any]) -> None:
        self.config.update(NoneSettings.from_flags(flag_values(self.flags, options)).to_config())

    def url(self) -> str:
        return str(self.config["URL"])

    def ip(self) -> str:
        return urlsplit(self.config["URL"]).hostname or ""

    def engine_port(self) -> int:
        return urlsplit(self.config["URL"]).port or 2376

    def state(self) -> State:
        # Nothing to ask: the engine is someone else's and is assumed up (Docker Machine's none driver says so too).
        return State.RUNNING

    def create(self) -> None:
        """Nothing to make: the engine already exists; the machine layer records it."""

    def remove(self) -> None:
        """Nothing to delete: the engine was never ours."""
