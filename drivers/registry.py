"""Driver registry: built-in drivers plus third-party ones from the `dockyard.drivers` entry points."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from dockyard.drivers.base import Driver
from dockyard.provisioner.core.errors import DriverNotFound

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

# name -> "module:Class". Modules are imported only when their driver is used (libcloud is slow to import).
BUILTIN = {
    "none": "dockyard.drivers.none:NoneDriver",
    "generic": "dockyard.drivers.generic:GenericDriver",
    "qemu": "dockyard.drivers.qemu.driver:QemuDriver",
    "virtualbox": "dockyard.drivers.virtualbox.driver:VirtualBoxDriver",
    "amazonec2": "dockyard.drivers.cloud.amazonec2:AmazonEC2Driver",
    "digitalocean": "dockyard.drivers.cloud.digitalocean:DigitalOceanDriver",
    "google": "dockyard.drivers.cloud.google:GoogleDriver",
    "azure": "dockyard.drivers.cloud.azure:AzureDriver",
    "openstack": "dockyard.drivers.cloud.openstack:OpenStackDriver",
    "linode": "dockyard.drivers.cloud.linode:LinodeDriver",
    "vultr": "dockyard.drivers.cloud.vultr:VultrDriver",
    "exoscale": "dockyard.drivers.cloud.exoscale:ExoscaleDriver",
    "libcloud": "dockyard.drivers.cloud.generic_libcloud:LibcloudDriver",
}


def _available(spec: str) -> bool:
    module = spec.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _load(spec: str) -> type[Driver]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points  # here: ~10 ms at every CLI start, needed only for plugin drivers

    try:
        return {ep.name: ep for ep in entry_points(group="dockyard.drivers")}
    except Exception:
        return {}


def builtin_names() -> list[str]:
    return sorted(n for n, spec in BUILTIN.items() if _available(spec))


def names() -> list[str]:
    return sorted(set(builtin_names()) | set(_entry_points()))


def get(name: str) -> type[Driver]:
    """The driver class registered under name."""
    spec = BUILTIN.get(name)
    if spec and _available(spec):
        return _load(spec)
    ep = _entry_points().get(name)
    if ep is None:
        raise DriverNotFound(name, names())
    try:
        return ep.load()
    except Exception as e:
        raise DriverNotFound(name, names()) from e
