"""Driver registry: built-in drivers plus third-party ones from the `dockyard.drivers` entry points."""

from importlib.metadata import entry_points

from provisioner.errors import DriverNotFound

BUILTIN = {
    "none": "drivers.none:NoneDriver",
    "generic": "drivers.generic:GenericDriver",
}


def _load(spec):
    module, _, attr = spec.partition(":")
    mod = __import__(module, fromlist=[attr])
    return getattr(mod, attr)


def _entry_points():
    try:
        return {ep.name: ep for ep in entry_points(group="dockyard.drivers")}
    except Exception:
        return {}


def names():
    return sorted(set(BUILTIN) | set(_entry_points()))


def get(name):
    """The driver class registered under name."""
    if name in BUILTIN:
        return _load(BUILTIN[name])
    ep = _entry_points().get(name)
    if ep is None:
        raise DriverNotFound(name, names())
    try:
        return ep.load()
    except Exception as e:
        raise DriverNotFound(name, names()) from e
