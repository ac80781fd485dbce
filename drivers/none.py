"""The `none` driver: records an engine URL that already exists; nothing is created or provisioned."""

from urllib.parse import urlsplit

from dockyard.drivers.base import Driver, Flag, State
from dockyard.provisioner.core.errors import DriverError


class NoneDriver(Driver):
    name = "none"
    provisions = False
    flags = [Flag("url", "URL of the host when no driver is selected", envvar="NONE_URL")]

    def set_config_from_flags(self, options):
        url = options.get("url") or ""
        if not url:
            raise DriverError("--url option is required for the none driver")
        parts = urlsplit(url)
        if parts.scheme not in ("tcp", "unix", "http", "https") or (parts.scheme != "unix" and not parts.hostname):
            raise DriverError(f'invalid --url "{url}": expected tcp://HOST:PORT')
        self.config["URL"] = url

    def url(self):
        return self.config["URL"]

    def ip(self):
        return urlsplit(self.config["URL"]).hostname or ""

    def engine_port(self):
        return urlsplit(self.config["URL"]).port or 2376

    def state(self):
        return State.RUNNING

    def remove(self):
        """Nothing to delete: the engine was never ours."""
