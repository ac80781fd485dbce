"""The qemu driver's command line and settings (pure functions; the real QEMU runs in test_qemu_process.py)."""

import random

import pytest

from dockyard.drivers.qemu import cmdline
from dockyard.drivers.qemu.driver import QemuDriver, guest_ip_for_mac
from dockyard.provisioner.core.errors import DriverError


def spec(**kw):
    base = dict(
        name="m1",
        binary="qemu-system-x86_64",
        accel="tcg",
        cpus=2,
        memory_mb=1024,
        disk="/s/m1/disk.qcow2",
        seed="/s/m1/seed.iso",
        kernel="/s/m1/vmlinuz",
        initrd="/s/m1/initrd",
        append="root=LABEL=r rw",
        ssh_port=40022,
        engine_host_port=40376,
        mac="52:54:00:aa:bb:cc",
        pidfile="/s/m1/qemu.pid",
        qmp="/s/m1/qmp.sock",
        serial_log="/s/m1/serial.log",
    )
    base.update(kw)
    return cmdline.VMSpec(**base)


def opt(argv, name):
    """All values given to option name."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def test_tcg_user_network_forwards_only_loopback():
    argv = cmdline.build(spec())
    assert opt(argv, "-accel") == ["tcg"] and "-cpu" not in argv
    assert opt(argv, "-smp") == ["2"] and opt(argv, "-m") == ["1024M"]
    (netdev,) = opt(argv, "-netdev")
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40376-:2376"
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc" in opt(argv, "-device")
    assert "-daemonize" in argv and opt(argv, "-pidfile") == ["/s/m1/qemu.pid"]
    assert opt(argv, "-qmp") == ["unix:/s/m1/qmp.sock,server=on,wait=off"]
    assert opt(argv, "-chardev") == ["file,id=serial0,path=/s/m1/serial.log"]
    assert opt(argv, "-kernel") == ["/s/m1/vmlinuz"] and opt(argv, "-initrd") == ["/s/m1/initrd"]
    assert opt(argv, "-append") == ["root=LABEL=r rw"]
    # the RTC follows the host's clock, through a suspend too: the guest's clock sync steps to it
    assert opt(argv, "-rtc") == ["base=utc,clock=host,driftfix=slew"]
    assert opt(argv, "-drive") == [
        "file=/s/m1/disk.qcow2,if=virtio,format=qcow2,discard=unmap",
        "file=/s/m1/seed.iso,if=virtio,format=raw,readonly=on",
    ]


def test_restrict_and_kvm():
    argv = cmdline.build(spec(restrict=True, accel="kvm", engine_guest_port=3376))
    (netdev,) = opt(argv, "-netdev")
    assert netdev.startswith("user,id=net0,restrict=on,")
    assert netdev.endswith("hostfwd=tcp:127.0.0.1:40376-:3376")
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]


def test_bridge_adds_a_second_nic_and_no_kernel_means_firmware_boot():
    argv = cmdline.build(spec(bridge="br0", bridge_mac="52:54:00:00:00:01", kernel="", initrd=""))
    assert opt(argv, "-netdev")[1] == "bridge,id=net1,br=br0"
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:00:00:01" in opt(argv, "-device")
    assert "-kernel" not in argv and "-append" not in argv and "-initrd" not in argv


def test_commas_in_paths_are_escaped():
    argv = cmdline.build(spec(disk="/a,b/disk.qcow2", qmp="/a,b/q.sock", serial_log="/a,b/s.log"))
    assert opt(argv, "-drive")[0].startswith("file=/a,,b/disk.qcow2,")
    assert opt(argv, "-qmp") == ["unix:/a,,b/q.sock,server=on,wait=off"]
    assert opt(argv, "-chardev") == ["file,id=serial0,path=/a,,b/s.log"]


@pytest.mark.parametrize(
    "text,expected",
    [
        (None, ("user", "")),
        ("user", ("user", "")),
        ("bridge=br0", ("bridge", "br0")),
        ("bridge=virbr-1", ("bridge", "virbr-1")),
    ],
)
def test_parse_network(text, expected):
    assert cmdline.parse_network(text) == expected


@pytest.mark.parametrize("text", ["bridge", "bridge=", "tap=x", "bridge=a;b", "bridge=waytoolongbridgename", "User"])
def test_parse_network_rejects(text):
    with pytest.raises(ValueError, match="invalid --qemu-network"):
        cmdline.parse_network(text)


def test_random_mac_is_local_qemu_range():
    mac = cmdline.random_mac(random.Random(1))
    assert mac.startswith("52:54:00:") and len(mac.split(":")) == 6


def flags(**kw):
    d = {f.key: f.default for f in QemuDriver.flags}
    d.update(kw)
    return d


def test_config_from_flags(tmp_path):
    d = QemuDriver("m1", str(tmp_path))
    d.set_config_from_flags(flags(qemu_restrict=True, qemu_memory=1024, qemu_accel="TCG"))
    assert d.config["Accel"] == "tcg" and d.config["Restrict"] is True and d.config["Network"] == "user"
    d.config.update(SSHPort=40022, EngineHostPort=40376)
    assert d.url() == "tcp://127.0.0.1:40376" and d.ip() == "127.0.0.1" and d.engine_port() == 2376
    t = d.ssh_target()
    assert (t.host, t.port, t.user) == ("127.0.0.1", 40022, "docker")


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(qemu_accel="xen"), "invalid --qemu-accel"),
        (dict(qemu_memory=64), "--qemu-memory >= 256"),
        (dict(qemu_disk_size=100), "--qemu-disk-size >= 1024"),
        (dict(qemu_network="bridge=br0", qemu_restrict=True), "cannot be combined"),
        (dict(qemu_network="nat"), "invalid --qemu-network"),
    ],
)
def test_config_errors(tmp_path, kw, message):
    with pytest.raises(DriverError, match=message):
        QemuDriver("m1", str(tmp_path)).set_config_from_flags(flags(**kw))


def test_bridge_mode_addresses(tmp_path):
    d = QemuDriver("m1", str(tmp_path))
    d.set_config_from_flags(flags(qemu_network="bridge=br0"))
    d.config.update(SSHPort=40022, EngineHostPort=40376)
    with pytest.raises(DriverError, match="no address on bridge br0"):
        d.ip()
    d.config["IPAddress"] = "192.0.2.7"
    assert d.url() == "tcp://192.0.2.7:2376" and d.ssh_host() == "127.0.0.1"


def test_guest_ip_for_mac():
    links = (
        "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
        "2: eth0: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc fq_codel state UP\\    link/ether 52:54:00:aa:bb:cc brd ff:ff:ff:ff:ff:ff\n"
        "3: eth1: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc fq_codel state UP\\    link/ether 52:54:00:11:22:33 brd ff:ff:ff:ff:ff:ff\n"
    )
    addrs = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "2: eth0    inet 10.0.2.15/24 metric 1024 brd 10.0.2.255 scope global dynamic eth0\\       valid_lft 86000sec\n"
        "3: eth1    inet 192.168.56.101/24 brd 192.168.56.255 scope global dynamic eth1\\       valid_lft 600sec\n"
    )
    assert guest_ip_for_mac(links, addrs, "52:54:00:11:22:33") == "192.168.56.101"
    assert guest_ip_for_mac(links, addrs, "52:54:00:AA:BB:CC") == "10.0.2.15"
    assert guest_ip_for_mac(links, addrs, "52:54:00:00:00:99") == ""
