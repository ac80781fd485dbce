"""`dockyard set NAME --cpus/--memory/--disk` on a qemu machine record whose disk is a real qcow2 made by qemu-img
(no VM boots): the disk grows, never shrinks, a running machine is refused, config.json records the new values,
and drivers without resources answer with NotSupported's wording."""

import json
import shutil
import subprocess

import pytest

from dockyard.drivers.base import State
from dockyard.drivers.qemu.driver import QemuDriver
from dockyard.provisioner.core.store import Store
from tests.cli_runner import cli_runner

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    store = str(tmp_path / "store")
    for k in ("DOCKER_HOST", "DOCKYARD_DRIVER", "MACHINE_DRIVER"):
        monkeypatch.delenv(k, raising=False)

    return cli_runner(store, capsys)


def qemu_machine(store_path, name="q1", disk_gib=2):
    """A qemu machine as create leaves it (config.json and disk.qcow2), never booted."""
    store = Store(store_path)
    mdir = store.reserve(name)
    d = QemuDriver(name, mdir)
    opts = {f.key: () if f.multiple else (bool(f.default) if f.is_flag else f.default) for f in d.flags}
    opts.update(cpus=1, memory=1, disk=disk_gib, no_share=True)
    d.set_config_from_flags(opts)
    d.config.update(SSHPort=40022, EngineHostPort=40376, MAC="52:54:00:12:34:56")  # what create adds
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", d.path("disk.qcow2"), f"{disk_gib}G"], check=True)
    store.save(name, {"DriverName": "qemu", "Driver": d.to_config()})
    return d.path("disk.qcow2")


def virtual_size(disk):
    out = subprocess.run(["qemu-img", "info", "--output=json", disk], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["virtual-size"]


def config(run, name="q1"):
    return Store(run.store).load(name)["Driver"]


def test_set_grows_the_disk_and_records_cpus_memory_disk(run):
    disk = qemu_machine(run.store)
    code, out, err = run("set", "q1", "--cpus", "3", "--memory", "1.5", "--disk", "5")
    assert code == 0, err
    assert "Growing the disk to 5 GiB" in out and "take effect when it starts" in out
    assert virtual_size(disk) == 5 << 30
    c = config(run)
    assert (c["CPUs"], c["Memory"], c["DiskSize"]) == (3, 1536, 5120)
    assert QemuDriver("q1", "", c).spec().cpus == 3  # what the next start hands QEMU


def test_set_refuses_to_shrink_and_changes_nothing(run):
    disk = qemu_machine(run.store, disk_gib=4)
    before = config(run)
    code, _, err = run("set", "q1", "--disk", "3", "--cpus", "2")
    assert code == 1
    assert 'cannot shrink the disk of "q1" from 4 GiB to 3 GiB: disks only grow' in err
    assert len(err.strip().splitlines()) == 1
    assert virtual_size(disk) == 4 << 30 and config(run) == before
    assert run("set", "q1", "--disk", "4")[0] == 0  # the same size is no change, not an error
    assert virtual_size(disk) == 4 << 30


def test_set_refuses_a_running_machine(run, monkeypatch):
    disk = qemu_machine(run.store)
    before = config(run)
    monkeypatch.setattr(QemuDriver, "state", lambda self: State.RUNNING)
    code, _, err = run("set", "q1", "--disk", "8")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert 'machine "q1" is running: stop it first (dockyard stop q1)' in err
    assert virtual_size(disk) == 2 << 30 and config(run) == before


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "nothing to set: give --cpus, --memory or --disk"),
        (("--cpus", "0"), "--cpus must be at least 1"),
        (("--memory", "0.1"), "--memory must be at least 0.25 (GiB)"),
        (("--disk", "0"), "--disk must be at least 1 (GiB)"),
    ],
)
def test_set_validates_like_create(run, args, message):
    qemu_machine(run.store)
    before = config(run)
    code, _, err = run("set", "q1", *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert config(run) == before


def test_drivers_without_resources_answer_not_supported(run):
    assert run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")[0] == 0
    code, _, err = run("set", "n1", "--cpus", "2")
    assert code == 1 and 'Driver "none" does not support "resize"' in err


def test_set_unknown_machine(run):
    code, _, err = run("set", "nope", "--cpus", "2")
    assert code != 0 and "nope" in err
