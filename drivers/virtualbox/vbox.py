"""Talking to VirtualBox: running VBoxManage, parsing its machine-readable output, and the command plans
(the VBoxManage calls Docker Machine's VirtualBox driver made, modernized; see the driver for the order)."""

import ipaddress
import re
import subprocess
import time

from dockyard.drivers.base import State
from dockyard.provisioner.core.errors import DriverError

NOT_READY = "The object is not ready"
VM_STATES = {
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "saved": State.SAVED,
    "poweroff": State.STOPPED,
    "aborted": State.STOPPED,
    "starting": State.STARTING,
    "restoring": State.STARTING,
    "stopping": State.STOPPING,
    "saving": State.STOPPING,
    "gurumeditation": State.ERROR,
}
DEFAULT_CIDR = "192.168.56.1/24"
# VirtualBox >= 6.1.28 allows host-only addresses only in this range unless /etc/vbox/networks.conf says more.
ALLOWED_HOSTONLY = ipaddress.ip_network("192.168.56.0/21")


class VBoxError(DriverError):
    def __init__(self, args, code, stderr):
        lines = [line for line in stderr.splitlines() if line.strip()]
        msg = next((line.split("error:", 1)[1].strip() for line in lines if "error:" in line), "")
        super().__init__(f"VBoxManage {' '.join(args[:2])} failed (exit {code}): {msg or stderr.strip()[-300:]}")
        self.code, self.stderr = code, stderr

    @property
    def not_found(self):
        return "Could not find a registered machine" in self.stderr or "VBOX_E_OBJECT_NOT_FOUND" in self.stderr


class VBoxManage:
    """Runs VBoxManage; stderr with "error:" counts as failure even on exit 0, as Docker Machine treated it."""

    def __init__(self, binary="VBoxManage", retries=5):
        self.binary, self.retries = binary, retries
        self.calls = []  # every argv run, for diagnostics

    def __call__(self, *args, check=True):
        args = [str(a) for a in args]
        for attempt in range(self.retries):
            self.calls.append(args)
            try:
                p = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=300)
            except OSError as e:
                raise DriverError(f"cannot run {self.binary}: {e.strerror}") from None
            failed = p.returncode != 0 or "error:" in p.stderr
            if failed and NOT_READY in p.stderr and attempt + 1 < self.retries:
                time.sleep(0.1)
                continue
            if failed and check:
                raise VBoxError(args, p.returncode, p.stderr)
            return p.stdout
        raise AssertionError("unreachable")


# -- parsing ------------------------------------------------------------------------------------------

_MR_LINE = re.compile(r'^(?:"((?:[^"\\]|\\.)*)"|([^=]+))=(?:"((?:[^"\\]|\\.)*)"|(.*))$')


def parse_machinereadable(text):
    """`showvminfo --machinereadable`: key="value" lines (keys may be quoted too) -> dict."""
    info = {}
    for line in text.splitlines():
        m = _MR_LINE.match(line.strip())
        if not m:
            continue
        key = m.group(1) if m.group(1) is not None else m.group(2)
        value = m.group(3) if m.group(3) is not None else m.group(4)
        info[key.replace('\\"', '"')] = value.replace('\\"', '"').replace("\\\\", "\\")
    return info


def vm_state(info):
    return VM_STATES.get(info.get("VMState", ""), State.ERROR)


def parse_blocks(text):
    """`list hostonlyifs` / `list dhcpservers`: "Key: value" blocks separated by blank lines."""
    blocks, cur = [], {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if cur:
                blocks.append(cur)
            cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            cur[key.strip()] = value.strip()
    return blocks


def parse_version(text):
    """`VBoxManage --version` ("7.0.14r161095") -> (7, 0, 14)."""
    m = re.match(r"^\s*(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise DriverError(f"cannot parse the VirtualBox version {text.strip()!r}")
    return tuple(int(x) for x in m.groups())


# -- host-only network --------------------------------------------------------------------------------


def parse_cidr(cidr):
    """--virtualbox-hostonly-cidr: the host's address on the network plus its prefix (e.g. 192.168.56.1/24)."""
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise DriverError(
            f'invalid --virtualbox-hostonly-cidr "{cidr}": expected an address/prefix such as {DEFAULT_CIDR}'
        ) from None
    if iface.version != 4:
        raise DriverError("--virtualbox-hostonly-cidr must be an IPv4 network")
    net = iface.network
    if iface.ip in (net.network_address, net.broadcast_address) or net.prefixlen > 29:
        raise DriverError(f"host-only cidr must be specified with a host address, not a network address: {cidr}")
    return iface


def dhcp_range(iface):
    """(server, lower, upper) for the host-only network's DHCP: the server next to the host address, leases
    from .100 (or the upper half of a small network) to the last address, or below both when the host sits
    at the top; never the host's or the server's address."""
    net = iface.network
    first, last = net.network_address + 1, net.broadcast_address - 1
    server = iface.ip + 1 if iface.ip + 1 <= last else iface.ip - 1
    lo, hi = min(iface.ip, server), max(iface.ip, server)
    lower = max(net.network_address + (100 if net.num_addresses >= 256 else net.num_addresses // 2), hi + 1)
    if lower <= last:
        return str(server), str(lower), str(last)
    if first <= lo - 1:
        return str(server), str(first), str(lo - 1)
    raise DriverError(f"host-only network {net} is too small for a DHCP range")


def find_hostonlyif(blocks, iface):
    """The host-only adapter already carrying iface's address and mask, or None."""
    for b in blocks:
        if b.get("IPAddress") == str(iface.ip) and b.get("NetworkMask") == str(iface.netmask):
            return b.get("Name")
    return None


def check_cidr_conflict(iface, host_networks):
    """host_networks: [(ifname, ip_interface)] of the host; a host-only network must not overlap them."""
    for name, addr in host_networks:
        if name.startswith("vboxnet"):
            continue
        if addr.network.overlaps(iface.network):
            raise DriverError(f"host-only cidr conflicts with the network address of a host interface ({name}: {addr})")


def host_networks():
    """[(ifname, ip_interface)] of the host's IPv4 addresses (from `ip -o -4 addr`)."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    except OSError:
        return []
    result = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet":
            result.append((words[1], ipaddress.ip_interface(words[3])))
    return result


# -- command plans -------------------------------------------------------------------------------------


def vbox_mac(mac):
    """VBoxManage wants MACs without separators."""
    return mac.replace(":", "").upper()


def create_plan(name, basefolder, cpus, memory_mb, ssh_port, nat_mac, disk, boot_iso, seed_iso, serial_log, shares=()):
    """VBoxManage calls that register and configure the VM (Docker Machine's order; boot from our CD when
    the image has no boot loader of its own). shares: [{"Path", "Tag", "ReadOnly"}] (drivers/qemu/shares.py)."""
    plan = [
        ["createvm", "--name", name, "--basefolder", basefolder, "--ostype", "Debian_64", "--register"],
        [
            "modifyvm",
            name,
            "--firmware",
            "bios",
            "--bioslogofadein",
            "off",
            "--bioslogofadeout",
            "off",
            "--bioslogodisplaytime",
            "0",
            "--biosbootmenu",
            "disabled",
            "--cpus",
            str(cpus),
            "--memory",
            str(memory_mb),
            "--acpi",
            "on",
            "--ioapic",
            "on",
            "--rtcuseutc",
            "on",
            "--cpuhotplug",
            "off",
            "--pae",
            "on",
            "--hpet",
            "on",
            "--hwvirtex",
            "on",
            "--nestedpaging",
            "on",
            "--largepages",
            "on",
            "--vtxvpid",
            "on",
            "--accelerate3d",
            "off",
            "--boot1",
            "dvd" if boot_iso else "disk",
            "--boot2",
            "disk",
            "--boot3",
            "none",
            "--boot4",
            "none",
            "--uart1",
            "0x3F8",
            "4",
            "--uartmode1",
            "file",
            serial_log,
        ],
        [
            "modifyvm",
            name,
            "--nic1",
            "nat",
            "--nictype1",
            "virtio",
            "--cableconnected1",
            "on",
            "--macaddress1",
            vbox_mac(nat_mac),
        ],
        ["modifyvm", name, "--natpf1", f"ssh,tcp,127.0.0.1,{ssh_port},,22"],
        ["storagectl", name, "--name", "SATA", "--add", "sata", "--portcount", "4", "--hostiocache", "on"],
        [
            "storageattach",
            name,
            "--storagectl",
            "SATA",
            "--port",
            "0",
            "--device",
            "0",
            "--type",
            "hdd",
            "--medium",
            disk,
        ],
    ]
    if boot_iso:
        plan.append(
            [
                "storageattach",
                name,
                "--storagectl",
                "SATA",
                "--port",
                "1",
                "--device",
                "0",
                "--type",
                "dvddrive",
                "--medium",
                boot_iso,
            ]
        )
    plan.append(
        [
            "storageattach",
            name,
            "--storagectl",
            "SATA",
            "--port",
            "2",
            "--device",
            "0",
            "--type",
            "dvddrive",
            "--medium",
            seed_iso,
        ]
    )
    for share in shares:
        plan += share_plan(name, share)
    return plan


def share_plan(name, share, transient=False):
    """Share a laptop folder with the VM: permanent (in its settings) while it is off, --transient while it runs
    (until it powers off). The guest may create symlinks in it, as on the laptop."""
    add = ["sharedfolder", "add", name, "--name", share["Tag"], "--hostpath", share["Path"]]
    add += ["--readonly"] if share.get("ReadOnly") else []
    add += ["--transient"] if transient else []
    return [add, ["setextradata", name, f"VBoxInternal2/SharedFoldersEnableSymlinksCreate/{share['Tag']}", "1"]]


def shared_folders(info):
    """{share name: host path} of the VM's permanent and transient shared folders (showvminfo --machinereadable)."""
    found = {}
    for kind in ("Machine", "Transient"):
        i = 1
        while f"SharedFolderName{kind}Mapping{i}" in info:
            found[info[f"SharedFolderName{kind}Mapping{i}"]] = info.get(f"SharedFolderPath{kind}Mapping{i}", "")
            i += 1
    return found


def nat_rules(info):
    """{rule name: "name,proto,hostip,hostport,guestip,guestport"} of the VM's NAT port forwards."""
    return {v.split(",", 1)[0]: v for k, v in info.items() if re.fullmatch(r"Forwarding\(\d+\)", k)}


def hostonly_nic_plan(name, adapter, mac):
    return [
        [
            "modifyvm",
            name,
            "--nic2",
            "hostonly",
            "--nictype2",
            "virtio",
            "--nicpromisc2",
            "deny",
            "--hostonlyadapter2",
            adapter,
            "--cableconnected2",
            "on",
            "--macaddress2",
            vbox_mac(mac),
        ]
    ]
