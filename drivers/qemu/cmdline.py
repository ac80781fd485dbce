"""The qemu-system command line of a machine, built from its settings (pure: no I/O, so it is unit-tested)."""

import dataclasses
import random

from dockyard.drivers.qemu import shares as shares_mod


def escape(value):
    """A value inside a QEMU option list: commas are doubled."""
    return str(value).replace(",", ",,")


def random_mac(rng=random):
    """A locally administered MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))


def parse_network(text):
    """--qemu-network: "user" or "bridge=NAME" -> (mode, bridge name or "")."""
    text = (text or "user").strip()
    if text == "user":
        return "user", ""
    mode, sep, name = text.partition("=")
    if mode == "bridge" and sep and name and all(c.isalnum() or c in "-_." for c in name) and len(name) <= 15:
        return "bridge", name
    raise ValueError(f'invalid --qemu-network "{text}": expected "user" or "bridge=NAME" (NAME: a bridge interface)')


@dataclasses.dataclass
class VMSpec:
    name: str
    binary: str
    accel: str  # "kvm" or "tcg"
    cpus: int
    memory_mb: int
    disk: str
    disk_format: str = "qcow2"
    seed: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    ssh_port: int = 0  # host side of the SSH forward (127.0.0.1)
    engine_host_port: int = 0  # host side of the engine forward (127.0.0.1)
    engine_guest_port: int = 2376
    mac: str = ""
    restrict: bool = False
    bridge: str = ""
    bridge_mac: str = ""
    pidfile: str = ""
    qmp: str = ""
    serial_log: str = ""
    shares: list = dataclasses.field(default_factory=list)  # [{"Path", "Tag", "ReadOnly"}] over virtio-9p


def build(spec):
    """argv for qemu-system-x86_64: daemonized, headless, serial console to a file, QMP on a unix socket."""
    argv = [spec.binary, "-name", f"dockyard-{spec.name}", "-nodefaults", "-no-user-config", "-accel", spec.accel]
    if spec.accel == "kvm":
        argv += ["-cpu", "host"]
    argv += ["-smp", str(spec.cpus), "-m", f"{spec.memory_mb}M", "-display", "none", "-vga", "none"]
    # The RTC follows the host's clock, also while QEMU is frozen by a suspend of the laptop: the guest steps its
    # system clock to it (guestunits' dockyard-clocksync.timer), no network time needed. slew: lost RTC ticks
    # are caught up gradually.
    argv += ["-rtc", "base=utc,clock=host,driftfix=slew"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel, "-append", spec.append]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
    argv += ["-drive", f"file={escape(spec.disk)},if=virtio,format={spec.disk_format},discard=unmap"]
    if spec.seed:
        argv += ["-drive", f"file={escape(spec.seed)},if=virtio,format=raw,readonly=on"]
    # User-mode NIC: SSH and the engine forwarded from 127.0.0.1 only; restrict=on cuts every outbound path.
    fwd = [f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"]
    if spec.engine_host_port:
        fwd.append(f"hostfwd=tcp:127.0.0.1:{spec.engine_host_port}-:{spec.engine_guest_port}")
    user = ",".join(["user", "id=net0"] + (["restrict=on"] if spec.restrict else []) + fwd)
    argv += ["-netdev", user, "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}"]
    if spec.bridge:
        argv += [
            "-netdev",
            f"bridge,id=net1,br={spec.bridge}",
            "-device",
            f"virtio-net-pci,netdev=net1,mac={spec.bridge_mac}",
        ]
    argv += shares_mod.virtfs_args(spec.shares, escape)
    argv += [
        "-device",
        "virtio-rng-pci",
        "-chardev",
        f"file,id=serial0,path={escape(spec.serial_log)}",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{escape(spec.qmp)},server=on,wait=off",
        "-monitor",
        "none",
        "-pidfile",
        spec.pidfile,
        "-daemonize",
    ]
    return argv
