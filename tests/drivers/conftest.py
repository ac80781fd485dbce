"""Fixtures of the virtualbox driver's tests: tests/drivers/fake_vboxmanage.py as VBoxManage, and a guest image."""

import json
import os
import subprocess
import sys

import pytest

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_vboxmanage.py")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """PATH starts with a VBoxManage that is the fake; returns a helper to run it and read its state."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "VBoxManage"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VBOX_STATE", str(tmp_path / "vbox.json"))
    monkeypatch.setenv("DOCKYARD_IMAGE_CACHE", str(tmp_path / "cache"))

    class Fake:
        def __call__(self, *args):
            return subprocess.run(["VBoxManage", *args], capture_output=True, text=True)

        def state(self):
            return json.loads((tmp_path / "vbox.json").read_text())

        def calls(self):
            return [json.loads(line) for line in (tmp_path / "vbox.json.log").read_text().splitlines()]

    return Fake()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    return str(path)
