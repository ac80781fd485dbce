"""The VirtualBox machine's port forwarder against a real engine: a machine made with `dockyard create -d generic` on
a test host stands in for the VM's engine (reached at its address, as a VirtualBox machine's engine is at its
host-only address), and tests/drivers/fake_vboxmanage.py for VirtualBox (a running VM with its NAT NIC). Containers
started and removed with the docker CLI make the forwarder add and delete NAT rules; a laptop port another program
holds is reported, not forwarded; stopping the forwarder takes its rules back (VirtualBox would keep them)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dockyard.drivers.qemu.portfwd import ForwarderProcess
from dockyard.drivers.virtualbox.driver import PORTFWD_MODULE
from tests import images
from tests.integration.test_generic import create_generic

pytestmark = pytest.mark.integration

FAKE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "drivers", "fake_vboxmanage.py")


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_nat_rules_follow_the_containers_of_a_real_engine(dockyard, make_host, tmp_path, monkeypatch):
    host = make_host()
    create_generic(dockyard, host, "vb1")
    dockyard.docker("vb1", "load", "-i", str(images.busybox_tar()), timeout=300)

    shim = tmp_path / "VBoxManage"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    shim.chmod(0o755)
    state = tmp_path / "vbox.json"
    monkeypatch.setenv("FAKE_VBOX_STATE", str(state))  # the forwarder inherits it

    def vbm(*args):
        subprocess.run([str(shim), *args], check=True, capture_output=True, text=True)

    def rules():
        return json.loads(state.read_text())["vms"]["vb1"]["natpf"].get("1", {})

    vbm("createvm", "--name", "vb1", "--basefolder", str(tmp_path / "vms"), "--register")
    vbm("modifyvm", "vb1", "--nic1", "nat")
    vbm("startvm", "vb1", "--type", "headless")

    mdir = os.path.join(dockyard.store, "machines", "vb1")  # ca.pem, cert.pem, key.pem: the client side of TLS
    forwarder = ForwarderProcess(mdir, PORTFWD_MODULE)
    forwarder.start(["--vm", "vb1", "--vboxmanage", str(shim), "--engine-host", host.ip, "--engine-port", "2376"])
    holder = socket.socket()
    try:
        assert forwarder.pid()
        web, dns = free_port(), free_port(socket.SOCK_DGRAM)
        dockyard.docker("vb1", "run", "-d", "--name", "web", "-p", f"{web}:80", "busybox", "sleep", "600")
        dockyard.docker("vb1", "run", "-d", "--name", "dns", "-p", f"{dns}:53/udp", "busybox", "sleep", "600")
        wait_for(lambda: f"dockyard-tcp-{web}" in rules() and f"dockyard-udp-{dns}" in rules(), "the NAT rules")
        assert rules()[f"dockyard-tcp-{web}"] == f"dockyard-tcp-{web},tcp,127.0.0.1,{web},,{web}"
        assert rules()[f"dockyard-udp-{dns}"] == f"dockyard-udp-{dns},udp,127.0.0.1,{dns},,{dns}"
        wait_for(lambda: forwarder.state().get("Forwarded") == {f"{web}/tcp": "web", f"{dns}/udp": "dns"}, "state")

        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        dockyard.docker("vb1", "run", "-d", "--name", "busy", "-p", f"{taken}:80", "busybox", "sleep", "600")
        wait_for(lambda: forwarder.state().get("Conflicts") == {f"{taken}/tcp": "busy"}, "the conflict")
        assert f"dockyard-tcp-{taken}" not in rules()
        with open(forwarder.log_path) as f:
            log = f.read()
        assert f"Warning: cannot forward 127.0.0.1:{taken}/tcp to container busy" in log

        dockyard.docker("vb1", "rm", "-f", "web")  # the container goes: so does its rule
        wait_for(lambda: f"dockyard-tcp-{web}" not in rules(), "the rule's removal")
        assert f"dockyard-udp-{dns}" in rules()
    finally:
        holder.close()
        forwarder.stop()
        dockyard.docker("vb1", "rm", "-f", "web", "dns", "busy", check=False)
    assert forwarder.pid() is None
    assert set(rules()) == set()  # taken back on the way out: nothing holds laptop ports for a stopped forwarder
