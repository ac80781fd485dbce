"""First run: `dockyard create` with no driver picks a local VM driver (qemu, else virtualbox, else one line
saying what to install, exit 3, before anything is made) and with no name makes "default"."""

import json
import os
import shutil
import stat
import subprocess

import pytest

from dockyard.drivers.guestimage.resources import default_cpus
from dockyard.drivers.qemu.settings import host_binary
from dockyard.provisioner.cli import create as create_cmd
from dockyard.provisioner.core import pki
from tests.cli_runner import cli_runner


def fake_tool(directory, name):
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    store = str(tmp_path / "store")
    for k in ("DOCKER_HOST", "DOCKYARD_DRIVER", "MACHINE_DRIVER", "QEMU_BINARY"):
        monkeypatch.delenv(k, raising=False)

    return cli_runner(store, capsys)


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


@pytest.mark.skipif(not shutil.which("docker"), reason="needs the docker CLI")
def test_create_makes_the_docker_context_and_rm_removes_it(run, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("DOCKYARD_DRIVER", "none")

    def context(name):
        p = subprocess.run(["docker", "context", "inspect", name], capture_output=True, text=True)
        return json.loads(p.stdout)[0] if p.returncode == 0 else None

    code, out, err = run("create", "--url", "tcp://192.0.2.8:2376", "ctx1")
    assert code == 0, err
    # the none driver only records an engine: no context (nothing was provisioned with our certs)
    assert context("dockyard-ctx1") is None
    code, out, err = run("rm", "-y", "ctx1")
    assert code == 0, err


def test_context_written_for_a_provisioned_machine_and_removed_with_it(tmp_path, monkeypatch):
    if not shutil.which("docker"):
        pytest.skip("needs the docker CLI")
    from dockyard.provisioner.cli import context as context_cmd

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))

    class FakeMachine:
        name = "web"

        class driver:
            provisions = True

        def url(self):
            return "tcp://127.0.0.1:2376"

        def tls_files(self):
            class T:
                ca, cert, key = (str(tmp_path / f) for f in ("ca.pem", "cert.pem", "key.pem"))

            return T

    paths = pki.CertPaths(str(tmp_path))  # docker reads the pair: real ones
    pki.ensure_ca(paths, lambda m: None)
    pki.ensure_client(paths, lambda m: None)
    lines = []
    context_cmd.context_after_create(FakeMachine(), lines.append)
    p = subprocess.run(["docker", "context", "inspect", "dockyard-web"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)[0]["Endpoints"]["docker"]["Host"] == "tcp://127.0.0.1:2376"
    assert any('Docker context "dockyard-web" created' in line for line in lines)
    context_cmd.remove_context("web", lines.append)
    p = subprocess.run(["docker", "context", "inspect", "dockyard-web"], capture_output=True, text=True)
    assert p.returncode != 0 and any("Removed docker context" in line for line in lines)


def test_default_image_falls_back_to_the_mmdebstrap_build_only_when_the_download_is_impossible(tmp_path, monkeypatch):
    from dockyard.drivers.guestimage import build, debian
    from dockyard.drivers.qemu.driver import QemuDriver
    from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

    d = QemuDriver("m", str(tmp_path / "store" / "machines" / "m"), {"ImageURLBase": "http://127.0.0.1:9/"})
    lines = []
    d.progress = lines.append
    built = build.GuestImage(disk="/cache/built.qcow2")

    def unavailable(*a, **k):
        raise debian.DownloadUnavailable("cannot download http://127.0.0.1:9/SHA512SUMS: Connection refused")

    monkeypatch.setattr(debian, "ensure", unavailable)
    monkeypatch.setattr(build, "check_can_build", lambda cache: None)
    monkeypatch.setattr(build, "ensure_image", lambda cache, log: built)
    assert d._resolve_image() is built
    assert any(line.startswith("Warning: cannot download") and "mmdebstrap instead" in line for line in lines)

    def cannot_build(cache):
        raise PreCreateCheckError("building the guest image needs root once")

    monkeypatch.setattr(build, "check_can_build", cannot_build)
    with pytest.raises(DriverError, match="Connection refused.*not possible here either: building the guest image"):
        d._resolve_image()

    def mismatch(*a, **k):
        raise DriverError("download has SHA-512 0000..., not the published 1111...")

    monkeypatch.setattr(debian, "ensure", mismatch)  # a bad download never falls back silently
    monkeypatch.setattr(build, "check_can_build", lambda cache: None)
    with pytest.raises(DriverError, match="not the published"):
        d._resolve_image()
