"""--cpus, --memory and --disk mean the same (GiB) for qemu and virtualbox, override the drivers' own MB
flags, and both drivers default to half the host's CPUs (at most 4), 2 GiB and 20 GiB."""

import pytest

from dockyard.drivers.guestimage import resources
from dockyard.drivers.qemu.driver import QemuDriver
from dockyard.drivers.virtualbox.driver import VirtualBoxDriver
from dockyard.provisioner.core.errors import DriverError

KEYS = {QemuDriver: ("CPUs", "Memory", "DiskSize"), VirtualBoxDriver: ("CPU", "Memory", "DiskSize")}


def configure(cls, tmp_path, **over):
    opts = {f.key: () if f.multiple else (bool(f.default) if f.is_flag else f.default) for f in cls.flags}
    opts.update(over)
    d = cls("m", str(tmp_path))
    d.set_config_from_flags(opts)
    return tuple(d.config[k] for k in KEYS[cls])


@pytest.mark.parametrize("cls", [QemuDriver, VirtualBoxDriver])
def test_same_defaults_and_units(cls, tmp_path):
    assert configure(cls, tmp_path) == (resources.default_cpus(), 2048, 20480)
    assert configure(cls, tmp_path, cpus=3, memory=1.5, disk=30) == (3, 1536, 30720)
    for bad in ({"cpus": 0}, {"memory": 0.1}, {"disk": 0}):
        with pytest.raises(DriverError):
            configure(cls, tmp_path, **bad)


def test_default_cpus_is_half_the_host_up_to_4(monkeypatch):
    for host, want in ((1, 1), (2, 1), (6, 3), (16, 4)):
        monkeypatch.setattr(resources.os, "cpu_count", lambda host=host: host)
        assert resources.default_cpus() == want
