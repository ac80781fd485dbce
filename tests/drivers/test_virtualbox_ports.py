"""Published ports of a VirtualBox machine: the fake VBoxManage's `controlvm natpf1` (refusing what VBoxManage
refuses), the NAT-rule port mapper under the shared forwarder's Forwards (rules follow the wanted set, a port
taken on the laptop is one warning, not a silent failure), and the forwarder process started and stopped with
the VM, leftover rules cleared. The forwarder against a real engine: tests/integration/test_virtualbox_forwarder.py."""

import json
import os
import shutil
import socket
import time

import pytest

from dockyard.drivers.qemu import portfwd as shared
from dockyard.drivers.virtualbox import driver as vdriver
from dockyard.drivers.virtualbox import portfwd, vbox
from tests.drivers.test_virtualbox import make

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_vm(fake, tmp_path, image):
    d = make(tmp_path, image, no_share=True)
    d.prepare_media()
    d.register()
    assert fake("startvm", "vb1", "--type", "headless").returncode == 0
    return d


def test_fake_controlvm_natpf_follows_vboxmanage(fake, tmp_path, image):
    d = make(tmp_path, image, no_share=True)
    d.prepare_media()
    d.register()
    r = fake("controlvm", "vb1", "natpf1", "web,tcp,127.0.0.1,8080,,80")
    assert r.returncode == 1 and "is not currently running" in r.stderr  # controlvm needs a running VM
    assert fake("startvm", "vb1", "--type", "headless").returncode == 0
    assert fake("controlvm", "vb1", "natpf1", "web,tcp,127.0.0.1,8080,,80").returncode == 0
    r = fake("controlvm", "vb1", "natpf1", "web,udp,127.0.0.1,9090,,90")
    assert r.returncode == 1 and "A NAT rule of this name already exists" in r.stderr
    r = fake("controlvm", "vb1", "natpf1", "other,tcp,127.0.0.1,8080,,81")
    assert r.returncode == 1 and "A NAT rule for this host port and this host IP already exists" in r.stderr
    assert fake("controlvm", "vb1", "natpf1", "other,udp,127.0.0.1,8080,,81").returncode == 0  # UDP is another port
    r = fake("controlvm", "vb1", "natpf1", "bad,sctp,127.0.0.1,1,,1")
    assert r.returncode == 2 and "Invalid NAT rule" in r.stderr
    assert fake("controlvm", "vb1", "natpf1", "delete", "web").returncode == 0
    r = fake("controlvm", "vb1", "natpf1", "delete", "web")
    assert r.returncode == 1 and "no rule named 'web'" in r.stderr
    info = vbox.parse_machinereadable(fake("showvminfo", "vb1", "--machinereadable").stdout)
    assert vbox.nat_rules(info) == {
        "ssh": f"ssh,tcp,127.0.0.1,{d.config['SSHPort']},,22",
        "other": "other,udp,127.0.0.1,8080,,81",
    }


def test_rules_follow_the_wanted_set_and_a_taken_port_is_a_warning(fake, tmp_path, image):
    running_vm(fake, tmp_path, image)
    lines = []
    mapper = portfwd.VirtualBoxPorts(vbox.VBoxManage("VBoxManage"), "vb1")
    fw = shared.Forwards(mapper, lines.append)
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    fw.apply({("tcp", tcp): "web", ("udp", udp): "dns"})
    rules = fake.state()["vms"]["vb1"]["natpf"]["1"]
    assert rules[f"dockyard-tcp-{tcp}"] == f"dockyard-tcp-{tcp},tcp,127.0.0.1,{tcp},,{tcp}"
    assert rules[f"dockyard-udp-{udp}"] == f"dockyard-udp-{udp},udp,127.0.0.1,{udp},,{udp}"
    assert fw.state() == {"Forwarded": {f"{tcp}/tcp": "web", f"{udp}/udp": "dns"}, "Conflicts": {}}

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        fw.apply({("tcp", taken): "busy"})  # web and dns stopped; busy publishes a port another program holds
        rules = fake.state()["vms"]["vb1"]["natpf"]["1"]
        assert sorted(rules) == ["ssh"]  # removed, and nothing was added for the taken port
        assert fw.state() == {"Forwarded": {}, "Conflicts": {f"{taken}/tcp": "busy"}}
        warnings = [line for line in lines if line.startswith("Warning:")]
        assert len(warnings) == 1, lines
        assert f"127.0.0.1:{taken}/tcp" in warnings[0] and "container busy" in warnings[0]
        assert "(VirtualBox: " in warnings[0] and "Address already in use" in warnings[0]
        fw.apply({("tcp", taken): "busy"})  # retried on the next event, not warned about again
        assert len([line for line in lines if line.startswith("Warning:")]) == 1
    finally:
        holder.close()
    fw.apply({("tcp", taken): "busy"})  # freed: now it is forwarded
    assert fw.state() == {"Forwarded": {f"{taken}/tcp": "busy"}, "Conflicts": {}}

    # A rule the user made for a port: VBoxManage refuses ours, and that is the warning's reason.
    mine = free_port()
    assert fake("controlvm", "vb1", "natpf1", f"mine,tcp,127.0.0.1,{mine},,80").returncode == 0
    fw.apply({("tcp", taken): "busy", ("tcp", mine): "web2"})
    assert fw.state()["Conflicts"] == {f"{mine}/tcp": "web2"}
    assert "A NAT rule for this host port and this host IP already exists" in lines[-1]
    fw.apply({})
    assert sorted(fake.state()["vms"]["vb1"]["natpf"]["1"]) == ["mine", "ssh"]

    assert mapper.running()
    assert fake("controlvm", "vb1", "poweroff").returncode == 0
    assert not mapper.running()


def test_reset_takes_back_leftover_rules_only(fake, tmp_path, image):
    running_vm(fake, tmp_path, image)
    for rule in ("dockyard-tcp-5555,tcp,127.0.0.1,5555,,5555", "mine,tcp,127.0.0.1,5556,,80"):
        assert fake("controlvm", "vb1", "natpf1", rule).returncode == 0
    portfwd.VirtualBoxPorts(vbox.VBoxManage("VBoxManage"), "vb1").reset()
    assert sorted(fake.state()["vms"]["vb1"]["natpf"]["1"]) == ["mine", "ssh"]


def wait_for(cond, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_forwarder_process_starts_and_stops_with_the_machine(fake, tmp_path, image):
    d = running_vm(fake, tmp_path, image)
    assert fake("controlvm", "vb1", "natpf1", "dockyard-tcp-5555,tcp,127.0.0.1,5555,,5555").returncode == 0
    d.config["IPAddress"] = "127.0.0.1"
    d.config["EnginePort"] = free_port()  # no engine there: the forwarder waits for it, saying so once
    d._start_forwarder()
    pid = d._forwarder().pid()
    assert pid and any("Published ports will answer on 127.0.0.1" in m for m in d.said)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert vdriver.PORTFWD_MODULE.encode() in f.read()
    assert wait_for(lambda: "dockyard-tcp-5555" not in fake.state()["vms"]["vb1"]["natpf"]["1"])
    assert wait_for(lambda: "waiting for the engine or VirtualBox" in open(d.path("portfwd.log")).read())
    assert d.published_ports() == {"Forwarded": {}, "Conflicts": {}}
    d.stop()
    assert not shared.alive(pid) and d._forwarder().pid() is None
    assert not os.path.exists(d.path("portfwd.pid"))
    log = open(d.path("portfwd.log")).read()
    assert "watching the engine on 127.0.0.1:" in log


def test_forwarder_exits_by_itself_when_the_vm_stops(fake, tmp_path, image, monkeypatch):
    d = running_vm(fake, tmp_path, image)
    d.config["IPAddress"] = "127.0.0.1"
    d.config["EnginePort"] = free_port()
    d._start_forwarder()
    pid = d._forwarder().pid()
    assert wait_for(lambda: os.path.exists(d.path("ports.json")))
    assert fake("controlvm", "vb1", "poweroff").returncode == 0  # e.g. from VirtualBox's own window
    assert wait_for(lambda: not shared.alive(pid), timeout=60)
    assert "the VM stopped (VirtualBox); stopping" in open(d.path("portfwd.log")).read()


def test_start_of_a_stopped_vm_clears_leftover_rules_and_adds_missing_shares(fake, tmp_path, image):
    d = make(tmp_path, image, no_share=True)
    d.prepare_media()
    d.register()
    assert fake("modifyvm", "vb1", "--natpf1", "dockyard-udp-7000,udp,127.0.0.1,7000,,7000").returncode == 0
    share = tmp_path / "work"
    share.mkdir()
    d.config["Shares"] = [{"Path": str(share), "Tag": "share0", "ReadOnly": True}]
    d.config["BootTimeout"] = 1  # nothing boots in the fake
    with pytest.raises(vdriver.DriverError, match="timed out"):
        d.start()
    vm = fake.state()["vms"]["vb1"]
    assert sorted(vm["natpf"]["1"]) == ["ssh"]
    assert vm["shares"] == {"share0": str(share)} and vm["readonly_shares"] == {"share0": True}
    assert ["sharedfolder", "add", "vb1", "--name", "share0", "--hostpath", str(share), "--readonly"] in fake.calls()
    assert not d._forwarder().pid()  # the VM never answered: no forwarder was started


def test_shares_of_a_running_vm_are_added_as_transient(fake, tmp_path, image):
    d = running_vm(fake, tmp_path, image)
    share = tmp_path / "src"
    share.mkdir()
    d.config["Shares"] = [{"Path": str(share), "Tag": "share0", "ReadOnly": False}]
    r = fake("sharedfolder", "add", "vb1", "--name", "x", "--hostpath", str(share))
    assert r.returncode == 1 and "already locked" in r.stderr  # a running VM's settings are locked
    d.start()  # running already (started outside dockyard): the share comes as a transient one
    assert ["sharedfolder", "add", "vb1", "--name", "share0", "--hostpath", str(share), "--transient"] in fake.calls()
    info = vbox.parse_machinereadable(fake("showvminfo", "vb1", "--machinereadable").stdout)
    assert vbox.shared_folders(info) == {"share0": str(share)}
    d.start()  # present now: not added twice
    assert sum(c[:2] == ["sharedfolder", "add"] for c in fake.calls()) == 2
    assert fake("controlvm", "vb1", "poweroff").returncode == 0
    info = vbox.parse_machinereadable(fake("showvminfo", "vb1", "--machinereadable").stdout)
    assert vbox.shared_folders(info) == {}  # transient shares end with the VM
    r = fake("sharedfolder", "add", "vb1", "--name", "y", "--hostpath", str(share), "--transient")
    assert r.returncode == 1 and "is not currently running" in r.stderr
    assert json.loads(json.dumps(d.config["Shares"])) == d.config["Shares"]
