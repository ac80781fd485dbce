"""First run: `dockyard create` with no driver picks a local VM driver (qemu, else virtualbox, else one line
saying what to install, exit 3, before anything is made) and with no name makes "default"."""

import os
import stat

import pytest

from dockyard.drivers.qemu.driver import default_cpus, host_binary
from dockyard.provisioner.cli import create as create_cmd
from dockyard.provisioner.cli.main import main


def fake_tool(directory, name):
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    store = str(tmp_path / "store")
    for k in ("DOCKER_HOST", "DOCKYARD_DRIVER", "MACHINE_DRIVER", "QEMU_BINARY"):
        monkeypatch.delenv(k, raising=False)

    def _run(*args):
        code = 0
        try:
            main(["--storage-path", store, *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    _run.store = store
    return _run


@pytest.fixture
def bindir(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def test_local_driver_prefers_qemu_then_virtualbox(bindir):
    assert create_cmd.local_driver() is None
    fake_tool(bindir, "VBoxManage")
    assert create_cmd.local_driver() == "virtualbox"
    fake_tool(bindir, host_binary())
    assert create_cmd.local_driver() == "qemu"


def test_host_binary_and_default_cpus():
    assert host_binary("x86_64") == "qemu-system-x86_64" and host_binary("arm64") == "qemu-system-aarch64"
    assert 1 <= default_cpus() <= 4


def test_no_local_driver_says_what_to_install_exit_3(run, bindir):
    code, out, err = run("create")
    assert code == 3 and "no local VM driver found: install QEMU" in err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(run.store, "machines", "default"))


def test_no_name_makes_default_and_the_env_var_sets_the_driver(run, bindir, monkeypatch):
    monkeypatch.setenv("DOCKYARD_DRIVER", "none")
    code, out, err = run("create", "--url", "tcp://192.0.2.7:2376")
    assert code == 0, err
    assert os.path.isdir(os.path.join(run.store, "machines", "default"))
    code, out, _ = run("url")  # Docker Machine's rule: no name means "default"
    assert code == 0 and out.strip() == "tcp://192.0.2.7:2376"


def test_qemu_flags_are_offered_without_d_when_qemu_is_installed(run, bindir):
    fake_tool(bindir, host_binary())
    code, out, _ = run("create", "--help")
    assert code == 0 and "--qemu-image-url-base" in out and "--qemu-cpus" in out
