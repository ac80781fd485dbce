"""The virtualbox driver against tests/drivers/fake_vboxmanage.py (first on PATH): the VBoxManage plan, host-only
network and DHCP set-up, state parsing, lifecycle and error paths. No real VirtualBox is involved."""

import os
import shutil

import pytest

from dockyard.drivers.base import State
from dockyard.drivers.guestimage import resources
from dockyard.drivers.virtualbox import driver as vdriver
from dockyard.drivers.virtualbox import vbox
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")


def flags(**kw):
    d = {f.key: f.default for f in vdriver.VirtualBoxDriver.flags}
    d.update(kw)
    return d


def make(tmp_path, image, **kw):
    mdir = tmp_path / "store" / "machines" / "vb1"
    mdir.mkdir(parents=True)
    d = vdriver.VirtualBoxDriver("vb1", str(mdir))
    d.said = []
    d.progress = d.said.append
    d.set_config_from_flags(flags(virtualbox_image=image, virtualbox_no_vtx_check=True, **kw))
    return d


# -- the fake itself enforces VBoxManage's grammar --------------------------------------------------------


def test_fake_rejects_what_vboxmanage_rejects(fake, tmp_path):
    assert fake("--version").stdout.strip() == "7.0.14r161095"
    r = fake("showvminfo", "nope", "--machinereadable")
    assert r.returncode == 1 and "Could not find a registered machine named 'nope'" in r.stderr
    assert fake("createvm", "--name", "a", "--register", "--basefolder", str(tmp_path)).returncode == 0
    r = fake("modifyvm", "a", "--memroy", "512")
    assert r.returncode == 2 and "Unknown option: --memroy" in r.stderr
    r = fake("modifyvm", "a", "--acpi", "maybe")
    assert r.returncode == 2 and "Invalid --acpi argument 'maybe'" in r.stderr
    r = fake("modifyvm", "a", "--macaddress1", "52:54:00:aa:bb:cc")
    assert r.returncode == 1 and "Invalid MAC address" in r.stderr
    r = fake("modifyvm", "a", "--natpf1", "ssh,tcp,127.0.0.1,2222,22")
    assert r.returncode == 2 and "Invalid NAT rule" in r.stderr
    r = fake(
        "storageattach",
        "a",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--medium",
        "/nonexistent.vdi",
    )
    assert "Could not find a controller named 'SATA'" in r.stderr
    assert fake("storagectl", "a", "--name", "SATA", "--add", "sata", "--portcount", "2").returncode == 0
    r = fake(
        "storageattach",
        "a",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--medium",
        "/nonexistent.vdi",
    )
    assert "VERR_FILE_NOT_FOUND" in r.stderr
    r = fake("controlvm", "a", "acpipowerbutton")
    assert r.returncode == 1 and "is not currently running" in r.stderr
    assert fake("startvm", "a", "--type", "headless").returncode == 0
    r = fake("startvm", "a", "--type", "headless")
    assert r.returncode == 1 and "already locked" in r.stderr
    r = fake("modifyvm", "a", "--memory", "512")
    assert r.returncode == 1 and "already locked" in r.stderr
    r = fake("unregistervm", "a", "--delete")
    assert r.returncode == 1 and "while it is locked" in r.stderr
    assert fake("hostonlyif", "create").returncode == 0
    r = fake("hostonlyif", "ipconfig", "vboxnet0", "--ip", "192.168.99.1", "--netmask", "255.255.255.0")
    assert r.returncode == 1 and "E_ACCESSDENIED" in r.stderr
    r = fake("dhcpserver", "add", "--network=HostInterfaceNetworking-vboxnet0", "--server-ip=192.168.56.2")
    assert r.returncode == 2 and "Missing --netmask" in r.stderr


def test_every_planned_command_is_accepted_by_the_fake(fake, tmp_path, image):
    d = make(tmp_path, image)
    d.pre_create_check()
    d.prepare_media()
    d.register()
    calls = fake.calls()
    verbs = [c[0] for c in calls]
    assert verbs[verbs.index("createvm") :] == [
        "createvm",
        "modifyvm",
        "modifyvm",
        "modifyvm",
        "storagectl",
        "storageattach",
        "storageattach",
        "sharedfolder",
        "setextradata",
    ]
    vm = fake.state()["vms"]["vb1"]
    assert vm["state"] == "poweroff" and vm["memory"] == 2048 and vm["cpus"] == resources.default_cpus()
    assert vm["media"]["SATA-0-0"] == {"type": "hdd", "path": d.path("disk.vdi")}
    assert vm["media"]["SATA-2-0"]["path"] == d.path("seed.iso")
    assert vm["nics"]["1"]["type"] == "nat" and vm["nics"]["1"]["mac"] == d.config["NATMAC"].replace(":", "").upper()
    assert vm["natpf"]["1"] == {"ssh": f"ssh,tcp,127.0.0.1,{d.config['SSHPort']},,22"}
    assert vm["shares"] == {"share0": os.path.expanduser("~")}
    assert fake.state()["medium_sizes"][d.path("disk.vdi")] == 20 << 30
    assert d.state() == State.STOPPED


def test_start_sets_up_hostonly_network_then_waits_for_ssh(fake, tmp_path, image):
    d = make(tmp_path, image, virtualbox_no_share=True)
    d.prepare_media()
    d.register()
    d.config["BootTimeout"] = 1  # nothing boots in the fake: the wait must fail, saying how far it got
    with pytest.raises(DriverError) as e:
        d.start()
    assert "timed out after 1s waiting for SSH log-in" in str(e.value)
    assert "VirtualBox VM: running;" in str(e.value)
    assert d.path("serial.log") in str(e.value)
    st = fake.state()
    assert st["hostonlyifs"][0]["ip"] == "192.168.56.1" and st["hostonlyifs"][0]["mask"] == "255.255.255.0"
    assert st["dhcpservers"] == [
        {
            "network": "HostInterfaceNetworking-vboxnet0",
            "enabled": True,
            "server": "192.168.56.2",
            "mask": "255.255.255.0",
            "lower": "192.168.56.100",
            "upper": "192.168.56.254",
        }
    ]
    nic2 = st["vms"]["vb1"]["nics"]["2"]
    assert nic2["type"] == "hostonly" and nic2["hostonly"] == "vboxnet0" and nic2["promisc"] == "deny"
    assert d.state() == State.RUNNING
    with pytest.raises(DriverError, match="no host-only address yet"):
        d.ip()

    # stop: ACPI power button; kill: poweroff; start again reuses the adapter and DHCP server.
    d.stop()
    assert d.state() == State.STOPPED
    with pytest.raises(DriverError):
        d.start()
    assert len(fake.state()["hostonlyifs"]) == 1 and len(fake.state()["dhcpservers"]) == 1
    d.kill()
    assert d.state() == State.STOPPED
    d.kill()  # already off: nothing to do


def test_stop_powers_off_a_guest_that_ignores_acpi(fake, tmp_path, image, monkeypatch):
    monkeypatch.setattr(vdriver, "STOP_TIMEOUT", 1.0)
    monkeypatch.setenv("FAKE_VBOX_IGNORE_ACPI", "1")
    d = make(tmp_path, image, virtualbox_no_share=True)
    d.prepare_media()
    d.register()
    assert fake("startvm", "vb1", "--type", "headless").returncode == 0
    d.stop()
    assert d.state() == State.STOPPED
    assert any("did not power off" in m for m in d.said)
    assert ["controlvm", "vb1", "poweroff"] in fake.calls()


def test_remove_running_and_half_created(fake, tmp_path, image):
    d = make(tmp_path, image, virtualbox_no_share=True)
    d.prepare_media()
    d.register()
    assert fake("startvm", "vb1", "--type", "headless").returncode == 0
    d.remove()
    assert fake.state()["vms"] == {}
    assert not any(os.path.exists(d.path(f)) for f in vdriver.FILES)
    d.remove()  # gone already: still succeeds
    with pytest.raises(DriverError, match="does not exist in VirtualBox"):
        d.state()


def test_existing_adapter_reused_and_dhcp_corrected(fake, tmp_path, image):
    fake("hostonlyif", "create")
    fake("hostonlyif", "create")
    fake("hostonlyif", "ipconfig", "vboxnet1", "--ip", "192.168.56.1", "--netmask", "255.255.255.0")
    fake(
        "dhcpserver",
        "add",
        "--network=HostInterfaceNetworking-vboxnet1",
        "--server-ip=192.168.56.100",
        "--netmask=255.255.255.0",
        "--lower-ip=192.168.56.101",
        "--upper-ip=192.168.56.200",
        "--disable",
    )
    d = make(tmp_path, image)
    assert d.ensure_hostonly() == "vboxnet1"
    (dhcp,) = fake.state()["dhcpservers"]
    assert dhcp["enabled"] and dhcp["server"] == "192.168.56.2" and dhcp["upper"] == "192.168.56.254"
    assert ["hostonlyif", "create"] not in fake.calls()[3:]


def test_access_denied_cidr_explains_networks_conf(fake, tmp_path, image):
    d = make(tmp_path, image, virtualbox_hostonly_cidr="192.168.99.1/24")
    d.pre_create_check()
    assert any("/etc/vbox/networks.conf" in m for m in d.said)  # warned before anything is made
    with pytest.raises(DriverError, match=r'networks.conf lists the network \(add the line "\* 192.168.99.0/24"\)'):
        d.ensure_hostonly()


def test_pre_create_errors(fake, tmp_path, image, monkeypatch):
    d = make(tmp_path, image)
    monkeypatch.setenv("FAKE_VBOX_VERSION", "4.3.40r117857")
    with pytest.raises(PreCreateCheckError, match="VirtualBox 4.3.40 is too old"):
        d.pre_create_check()
    monkeypatch.delenv("FAKE_VBOX_VERSION")
    d.config["NoVTXCheck"] = False
    with open("/proc/cpuinfo") as f:
        has_vtx = any(w in ("vmx", "svm") for line in f if line.startswith("flags") for w in line.split())
    if has_vtx:
        d.pre_create_check()
    else:
        with pytest.raises(PreCreateCheckError, match="doesn't have VT-X/AMD-v enabled"):
            d.pre_create_check()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(PreCreateCheckError, match="VBoxManage not found: install VirtualBox"):
        vdriver.VirtualBoxDriver("x", str(tmp_path)).pre_create_check()


def test_flag_validation(tmp_path):
    d = vdriver.VirtualBoxDriver("x", str(tmp_path))
    with pytest.raises(DriverError, match="not a network address"):
        d.set_config_from_flags(flags(virtualbox_hostonly_cidr="192.168.56.0/24"))
    with pytest.raises(DriverError, match="invalid --virtualbox-hostonly-cidr"):
        d.set_config_from_flags(flags(virtualbox_hostonly_cidr="vboxnet0"))
    d.set_config_from_flags(flags(virtualbox_cpu_count=-1))
    assert d.config["CPU"] == min(os.cpu_count(), 32) and d.config["HostOnlyCIDR"] == "192.168.56.1/24"


# -- parsing -------------------------------------------------------------------------------------------------


def test_parse_machinereadable():
    text = (
        'name="vb1"\nmemory=1024\nVMState="poweroff"\n"SATA-0-0"="/s/disk.vdi"\n'
        'description="a \\"quoted\\" word"\nForwarding(0)="ssh,tcp,127.0.0.1,2222,,22"\n'
    )
    info = vbox.parse_machinereadable(text)
    assert info["name"] == "vb1" and info["memory"] == "1024" and info["SATA-0-0"] == "/s/disk.vdi"
    assert info["description"] == 'a "quoted" word' and info["Forwarding(0)"].endswith(",22")
    assert vbox.vm_state(info) == State.STOPPED


@pytest.mark.parametrize(
    "raw,state",
    [
        ("running", State.RUNNING),
        ("paused", State.PAUSED),
        ("saved", State.SAVED),
        ("aborted", State.STOPPED),
        ("gurumeditation", State.ERROR),
        ("starting", State.STARTING),
        ("", State.ERROR),
    ],
)
def test_vm_states(raw, state):
    assert vbox.vm_state({"VMState": raw}) == state


def test_parse_blocks_and_version():
    text = (
        "Name:            vboxnet0\nIPAddress:       192.168.56.1\nNetworkMask:     255.255.255.0\n\n"
        "Name:            vboxnet1\nIPAddress:       192.168.57.1\nNetworkMask:     255.255.255.0\n"
    )
    blocks = vbox.parse_blocks(text)
    assert [b["Name"] for b in blocks] == ["vboxnet0", "vboxnet1"]
    assert vbox.find_hostonlyif(blocks, vbox.parse_cidr("192.168.57.1/24")) == "vboxnet1"
    assert vbox.find_hostonlyif(blocks, vbox.parse_cidr("192.168.57.1/25")) is None
    assert vbox.parse_version("7.0.14r161095\n") == (7, 0, 14)
    with pytest.raises(DriverError):
        vbox.parse_version("WARNING: The vboxdrv kernel module is not loaded.")


def test_cidr_conflicts_with_host_interfaces():
    import ipaddress

    host = [
        ("eth0", ipaddress.ip_interface("192.168.56.20/24")),
        ("vboxnet0", ipaddress.ip_interface("192.168.57.1/24")),
    ]
    with pytest.raises(DriverError, match=r"conflicts with the network address of a host interface \(eth0"):
        vbox.check_cidr_conflict(vbox.parse_cidr("192.168.56.1/24"), host)
    vbox.check_cidr_conflict(vbox.parse_cidr("192.168.57.1/24"), host)  # VirtualBox's own adapter is fine


def test_vboxmanage_error_on_stderr_with_exit_zero(tmp_path):
    script = tmp_path / "vbm"
    script.write_text("#!/bin/sh\necho 'VBoxManage: error: The object is not ready' >&2\nexit 0\n")
    script.chmod(0o755)
    vbm = vbox.VBoxManage(str(script), retries=3)
    with pytest.raises(vbox.VBoxError, match="The object is not ready"):
        vbm("list", "vms")
    assert len(vbm.calls) == 3  # retried, as Docker Machine did for this error


# -- dockyard set: resources of a stopped machine ----------------------------------------------------------------


def test_resize_runs_modifyvm_and_grows_the_medium(fake, tmp_path, image):
    d = make(tmp_path, image, virtualbox_no_share=True)
    d.prepare_media()
    d.register()
    d.resize(cpus=3, memory_mb=3072, disk_mb=30 * 1024)
    assert ["modifyvm", "vb1", "--cpus", "3", "--memory", "3072"] in fake.calls()
    assert ["modifymedium", "disk", d.path("disk.vdi"), "--resize", "30720"] in fake.calls()
    vm = fake.state()["vms"]["vb1"]
    assert vm["cpus"] == 3 and vm["memory"] == 3072
    assert fake.state()["medium_sizes"][d.path("disk.vdi")] == 30 << 30
    assert (d.config["CPU"], d.config["Memory"], d.config["DiskSize"]) == (3, 3072, 30720)
    assert any("Growing the disk to 30 GiB" in m for m in d.said)


def test_resize_refuses_to_shrink_before_calling_vboxmanage(fake, tmp_path, image):
    d = make(tmp_path, image, virtualbox_no_share=True)
    d.prepare_media()
    d.register()
    before, calls = dict(d.config), len(fake.calls())
    with pytest.raises(DriverError, match=r'cannot shrink the disk of "vb1" from 20 GiB to 10 GiB: disks only grow'):
        d.resize(cpus=2, disk_mb=10 * 1024)
    assert len(fake.calls()) == calls and d.config == before
    assert fake.state()["medium_sizes"][d.path("disk.vdi")] == 20 << 30
    d.resize(memory_mb=1024)  # memory only: no medium change
    assert fake.calls()[-1] == ["modifyvm", "vb1", "--cpus", str(d.config["CPU"]), "--memory", "1024"]
    with pytest.raises(DriverError, match="--virtualbox-memory >= 256"):
        d.resize(memory_mb=100)
