"""The `virtualbox` driver: Docker Machine's VBoxManage sequence with dockyard's guest image and cloud-init.

NAT NIC with an SSH forward on 127.0.0.1 (how dockyard logs in) plus a host-only NIC (how clients reach the
engine, at the address the guest reports for that NIC). Containers' published ports answer on the laptop's
127.0.0.1 through NAT rules a forwarder process keeps (portfwd); laptop folders are shared at the same paths
(shares). Nothing here has run against a real VirtualBox yet: the tests use tests/drivers/fake_vboxmanage.py,
which enforces VBoxManage's argument grammar.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shlex
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from dockyard.drivers.base import POWER, Capability, Driver, Flag, Settings, State, flag_values, setting
from dockyard.drivers.guestimage import build, resources, seed, source, tools
from dockyard.drivers.qemu import boot
from dockyard.drivers.qemu import shares as share_choice
from dockyard.drivers.qemu.cmdline import random_mac
from dockyard.drivers.qemu.driver import free_port, guest_ip_for_mac, port_free
from dockyard.drivers.qemu.portfwd import ForwarderProcess
from dockyard.drivers.virtualbox import portfwd, shares, vbox
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

STOP_TIMEOUT = 90.0
FILES = ("disk.vdi", "boot.iso", "seed.iso", "serial.log", *ForwarderProcess.FILES)
PORTFWD_MODULE = "dockyard.drivers.virtualbox.portfwd"


@dataclasses.dataclass
class VirtualBoxSettings(Settings):
    cpus: int = setting("CPU", flag="virtualbox_cpu_count")
    memory: int = setting("Memory", flag="virtualbox_memory")
    disk_size: int = setting("DiskSize", flag="virtualbox_disk_size")
    host_only_cidr: str = setting("HostOnlyCIDR", flag="virtualbox_hostonly_cidr")
    host_only_no_dhcp: bool = setting("HostOnlyNoDHCP", flag="virtualbox_hostonly_no_dhcp")
    no_share: bool = setting("NoShare", flag="virtualbox_no_share")
    no_vtx_check: bool = setting("NoVTXCheck", flag="virtualbox_no_vtx_check")
    image: str = setting("Image", flag="virtualbox_image")
    image_sha256: str = setting("ImageSHA256", flag="virtualbox_image_sha256")
    boot_timeout: int = setting("BootTimeout", flag="virtualbox_boot_timeout")
    ssh_user: str = setting("SSHUser")

    def __post_init__(self) -> None:
        cpus = int(self.cpus)
        self.cpus = min(os.cpu_count() or 1 if cpus == -1 else cpus, 32)
        self.memory, self.disk_size, self.boot_timeout = int(self.memory), int(self.disk_size), int(self.boot_timeout)
        if self.cpus < 1 or self.memory < 256 or self.disk_size < 1024:
            raise DriverError(
                "--virtualbox-cpu-count must be >= 1 (or -1), --virtualbox-memory >= 256 (MB) and "
                "--virtualbox-disk-size >= 1024 (MB)"
            )
        vbox.parse_cidr(self.host_only_cidr)
        self.image, self.image_sha256 = self.image or "", (self.image_sha256 or "").lower()


class VirtualBoxDriver(Driver):
    name = "virtualbox"
    capabilities = POWER | {Capability.RESIZE}
    flags = [
        Flag(
            "virtualbox-cpu-count",
            "Number of CPUs for the machine (-1 = all host CPUs)",
            default=resources.default_cpus(),
            type=int,
            envvar="VIRTUALBOX_CPU_COUNT",
        ),
        Flag(
            "virtualbox-memory",
            "Memory in MB",
            default=resources.DEFAULT_MEMORY_MB,
            type=int,
            envvar="VIRTUALBOX_MEMORY_SIZE",
        ),
        Flag(
            "virtualbox-disk-size",
            "Disk size in MB",
            default=resources.DEFAULT_DISK_MB,
            type=int,
            envvar="VIRTUALBOX_DISK_SIZE",
        ),
        *resources.FLAGS,
        Flag(
            "virtualbox-hostonly-cidr",
            "Host-only network: the host's address and prefix (VirtualBox >= 6.1.28 "
            "allows 192.168.56.0/21 unless /etc/vbox/networks.conf says more)",
            default=vbox.DEFAULT_CIDR,
            envvar="VIRTUALBOX_HOSTONLY_CIDR",
        ),
        Flag(
            "virtualbox-hostonly-no-dhcp",
            "Do not set up a DHCP server on the host-only network",
            is_flag=True,
            envvar="VIRTUALBOX_HOSTONLY_NO_DHCP",
        ),
        *shares.FLAGS,
        Flag(
            "virtualbox-no-share",
            "Do not share the user's home folder with the machine (the same as --no-share)",
            is_flag=True,
            envvar="VIRTUALBOX_NO_SHARE",
        ),
        Flag(
            "virtualbox-no-vtx-check",
            "Skip the hardware virtualization check",
            is_flag=True,
            envvar="VIRTUALBOX_NO_VTX_CHECK",
        ),
        Flag(
            "virtualbox-image",
            "Guest image: a path or http(s) URL of a cloud image (qcow2, raw, vdi) with "
            "cloud-init; default: dockyard's own Debian image",
            envvar="VIRTUALBOX_IMAGE",
        ),
        Flag(
            "virtualbox-image-sha256",
            "sha256 of --virtualbox-image (required for URLs)",
            envvar="VIRTUALBOX_IMAGE_SHA256",
        ),
        Flag(
            "virtualbox-boot-timeout",
            "Seconds to wait for the VM to accept SSH log-ins",
            default=300,
            type=int,
            envvar="VIRTUALBOX_BOOT_TIMEOUT",
        ),
    ]

    def __init__(self, machine_name, machine_dir, config=None, progress=None):
        super().__init__(machine_name, machine_dir, config, progress)
        self._vbm = None

    @property
    def vbm(self):
        if self._vbm is None:
            self._vbm = vbox.VBoxManage(tools.find("VBoxManage") or "VBoxManage")
        return self._vbm

    @property
    def cache_dir(self):
        return build.store_cache_dir(self.machine_dir)

    # -- configuration --------------------------------------------------------------------------
    def set_config_from_flags(self, options: Mapping[str, Any]) -> None:
        values = flag_values(self.flags, options)
        given = resources.overrides(values)  # --cpus/--memory/--disk (GiB) win over --virtualbox-* (MB)
        values.update(
            virtualbox_cpu_count=given.get("cpus", values["virtualbox_cpu_count"]),
            virtualbox_memory=given.get("memory_mb", values["virtualbox_memory"]),
            virtualbox_disk_size=given.get("disk_mb", values["virtualbox_disk_size"]),
        )
        settings = VirtualBoxSettings.from_flags(values, ssh_user=build.recipe.SSH_USER)
        self.config.update(settings.to_config())
        chosen = shares.from_flags(values, settings.ssh_user)
        if chosen is not None:  # else the default (home) is chosen at create time, as qemu does
            self.config["Shares"] = chosen

    # -- addresses --------------------------------------------------------------------------------
    def ssh_host(self):
        return "127.0.0.1"  # NAT port forward

    def ip(self):
        ip = self.config.get("IPAddress")
        if not ip:
            raise DriverError(f'machine "{self.machine_name}" has no host-only address yet (is it running?)')
        return ip

    # -- checks --------------------------------------------------------------------------------------
    def pre_create_check(self):
        if not tools.find("VBoxManage"):
            raise PreCreateCheckError(
                "VBoxManage not found: install VirtualBox (https://www.virtualbox.org/wiki/Downloads, or on "
                'Debian/Ubuntu "apt-get install virtualbox") and make sure VBoxManage is on PATH'
            )
        version = vbox.parse_version(self.vbm("--version"))
        if version < (5, 0, 0):
            raise PreCreateCheckError(
                f"VirtualBox {'.'.join(map(str, version))} is too old: dockyard needs 5.0 "
                "or later (6.1.28+ recommended)"
            )
        self.config["VBoxVersion"] = ".".join(map(str, version))
        if not self.config.get("NoVTXCheck") and not _cpu_has_virtualization():
            raise PreCreateCheckError(
                "This computer doesn't have VT-X/AMD-v enabled. Enabling it in the BIOS is mandatory "
                "(or pass --virtualbox-no-vtx-check to try anyway)"
            )
        iface = vbox.parse_cidr(self.config["HostOnlyCIDR"])
        try:
            vbox.check_cidr_conflict(iface, vbox.host_networks())
        except DriverError as e:
            raise PreCreateCheckError(str(e)) from None
        if not iface.network.subnet_of(vbox.ALLOWED_HOSTONLY) and version >= (6, 1, 28):
            self.progress(
                f"Warning: VirtualBox {self.config['VBoxVersion']} allows host-only networks only in "
                f"{vbox.ALLOWED_HOSTONLY} unless /etc/vbox/networks.conf lists {iface.network}."
            )
        names = [b.get("Name") for b in vbox.parse_blocks(self.vbm("list", "hostonlyifs"))]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise PreCreateCheckError(
                f"VirtualBox lists duplicate host-only adapters {sorted(dup)}; remove them "
                "with VBoxManage hostonlyif remove"
            )
        tools.require("qemu-img", "to convert the guest image to VDI")
        if self.config.get("Image"):
            source.check(self.config["Image"], self.config.get("ImageSHA256"), "virtualbox-image")
        else:
            build.check_can_build(self.cache_dir)

    # -- create ---------------------------------------------------------------------------------------------
    def create(self):
        self.prepare_media()
        self.register()
        self.start()

    def prepare_media(self):
        """The VM's disk (VDI converted from the guest image, grown), boot CD (when needed) and seed ISO."""
        public_key = self.ensure_ssh_key()
        image = source.resolve(self.config.get("Image"), self.config.get("ImageSHA256"), self.cache_dir, self.progress)
        self.config["BaseImage"] = image.to_config()
        self.progress("Converting the guest image to a VirtualBox disk...")
        p = subprocess.run(
            [tools.find("qemu-img") or "qemu-img", "convert", "-O", "vdi", image.disk, self.path("disk.vdi")],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise DriverError(f"cannot convert {image.disk} to VDI: {p.stderr.strip()}")
        if image.kernel:  # no boot loader on our image's disk: boot its kernel from a small isolinux CD
            # tty0 too: VirtualBox shows the VM's screen, while the serial port goes to serial.log.
            cmdline = image.cmdline.replace("console=ttyS0,115200", "console=tty0 console=ttyS0,115200")
            seed.write_boot_iso(self.path("boot.iso"), image, cmdline)
        rng = random.SystemRandom()
        self.config["NATMAC"], self.config["HostOnlyMAC"] = random_mac(rng), random_mac(rng)
        self.config["InstanceID"] = seed.instance_id(self.machine_name)
        nics = [
            seed.nic("nat", self.config["NATMAC"]),
            seed.nic("hostonly", self.config["HostOnlyMAC"], default_route=False),
        ]
        if "Shares" not in self.config:
            self.config["Shares"], why_not = share_choice.default(self.ssh_user())
            if why_not:
                self.progress(f"Warning: {why_not}")
        for s in self.config["Shares"]:
            self.progress(f"Sharing {s['Path']}{' (read-only)' if s['ReadOnly'] else ''} with the machine")
        seed.write_seed(
            self.path("seed.iso"),
            seed.render(self.machine_name, self.config["InstanceID"], public_key, nics, user=self.ssh_user()),
        )
        self.config["SSHPort"] = free_port()

    def register(self):
        """Create and configure the VM in VirtualBox (Docker Machine's createvm/modifyvm/storage sequence)."""
        plan = vbox.create_plan(
            self.machine_name,
            self.machine_dir,
            self.config["CPU"],
            self.config["Memory"],
            self.config["SSHPort"],
            self.config["NATMAC"],
            self.path("disk.vdi"),
            self.path("boot.iso") if os.path.exists(self.path("boot.iso")) else "",
            self.path("seed.iso"),
            self.path("serial.log"),
            self.config.get("Shares") or [],
        )
        # Grow the disk before it is attached: the guest grows its file system on first boot.
        self.vbm("modifymedium", "disk", self.path("disk.vdi"), "--resize", self.config["DiskSize"])
        for args in plan:
            self.vbm(*args)
        self.config["Registered"] = True

    # -- host-only network -----------------------------------------------------------------------------------
    def ensure_hostonly(self):
        """The host-only adapter for the CIDR (created when missing) and its DHCP server; returns its name."""
        iface = vbox.parse_cidr(self.config["HostOnlyCIDR"])
        name = vbox.find_hostonlyif(vbox.parse_blocks(self.vbm("list", "hostonlyifs")), iface)
        if not name:
            out = self.vbm("hostonlyif", "create", check=False)
            created = [w.strip("'") for w in out.split() if w.strip("'").startswith("vboxnet")]
            # VirtualBox bug #14040: the new adapter can take a moment to be listed.
            for _ in range(10):
                names = [b.get("Name") for b in vbox.parse_blocks(self.vbm("list", "hostonlyifs"))]
                if created and created[0] in names:
                    name = created[0]
                    break
                time.sleep(1)
            if not name:
                raise DriverError(
                    "The host-only adapter we just created is not visible. This is a well known "
                    "VirtualBox bug. You might want to uninstall it and reinstall at least version "
                    "5.0.12 that is supposed to fix this issue"
                )
            try:
                self.vbm("hostonlyif", "ipconfig", name, "--ip", str(iface.ip), "--netmask", str(iface.netmask))
            except vbox.VBoxError as e:
                if "E_ACCESSDENIED" in e.stderr:
                    raise DriverError(
                        f"VirtualBox refused the host-only address {iface}: since 6.1.28 it allows "
                        f"only {vbox.ALLOWED_HOSTONLY} unless /etc/vbox/networks.conf lists the "
                        f'network (add the line "* {iface.network}")'
                    ) from None
                raise
        if not self.config.get("HostOnlyNoDHCP"):
            self._ensure_dhcp(name, iface)
        return name

    def _ensure_dhcp(self, adapter, iface):
        network = f"HostInterfaceNetworking-{adapter}"
        server, lower, upper = vbox.dhcp_range(iface)
        wanted = {"NetworkMask": str(iface.netmask), "LowerIPAddress": lower, "UpperIPAddress": upper}
        for b in vbox.parse_blocks(self.vbm("list", "dhcpservers")):
            if b.get("NetworkName") == network:
                server_now = b.get("Dhcpd IP") or b.get("IP")  # "IP" before VirtualBox 6.1
                if server_now == server and all(b.get(k) == v for k, v in wanted.items()) and b.get("Enabled") == "Yes":
                    return
                verb = "modify"
                break
        else:
            verb = "add"
        self.vbm(
            "dhcpserver",
            verb,
            f"--network={network}",
            f"--server-ip={server}",
            f"--netmask={iface.netmask}",
            f"--lower-ip={lower}",
            f"--upper-ip={upper}",
            "--enable",
        )

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _info(self):
        try:
            return vbox.parse_machinereadable(self.vbm("showvminfo", self.machine_name, "--machinereadable"))
        except vbox.VBoxError as e:
            if e.not_found:
                return None
            raise

    def state(self):
        info = self._info()
        if info is None:
            raise DriverError(f'machine "{self.machine_name}" does not exist in VirtualBox')
        return vbox.vm_state(info)

    def start(self):
        info = self._info()
        if info is None:
            raise DriverError(f'machine "{self.machine_name}" does not exist in VirtualBox')
        st = vbox.vm_state(info)
        if st in (State.RUNNING, State.PAUSED):
            if st == State.PAUSED:
                self.vbm("controlvm", self.machine_name, "resume")
            self._ensure_shares(info, running=True)  # started outside dockyard, perhaps: shares as transient
            if self.config.get("IPAddress"):
                self._mount_shares()
                self._start_forwarder()
            return
        if st == State.STOPPED:  # the NICs and forward can only change while the VM is off
            adapter = self.ensure_hostonly()
            for args in vbox.hostonly_nic_plan(self.machine_name, adapter, self.config["HostOnlyMAC"]):
                self.vbm(*args)
            for name in portfwd.leftover_rules(info):  # kept in the settings by a forwarder that did not stop
                self.vbm("modifyvm", self.machine_name, "--natpf1", "delete", name)
            self._ensure_shares(info, running=False)
            if not port_free(int(self.config["SSHPort"])):
                raise DriverError(
                    f"cannot start: 127.0.0.1:{self.config['SSHPort']}, the machine's SSH port, is in "
                    "use by another program"
                )
        offset = boot.serial_size(self.path("serial.log"))
        try:
            self.vbm("startvm", self.machine_name, "--type", "headless")
        except vbox.VBoxError as e:
            raise DriverError(f"{e}{self._vbox_log_tail()}") from None
        self.config.pop("IPAddress", None)
        boot.wait_for_login(
            self.machine_name,
            self.ssh_target(),
            self._running_marker,
            self.path("serial.log"),
            offset,
            float(self.config.get("BootTimeout") or 300),
            what="VirtualBox VM",
        )
        self._learn_ip()
        self._mount_shares()
        self._start_forwarder()

    # -- shared folders ----------------------------------------------------------------------------------------
    def _ensure_shares(self, info, running):
        """Every share of the machine is a VirtualBox shared folder: added to the settings while the VM is off,
        as a transient one while it runs. (Machines made before "Shares" was recorded keep what they have.)"""
        present = vbox.shared_folders(info)
        for share in self.config.get("Shares") or []:
            if share["Tag"] not in present:
                for args in vbox.share_plan(self.machine_name, share, transient=running):
                    self.vbm(*args)

    def _mount_shares(self):
        """Mount the shares in the guest at their laptop paths (vboxsf) and keep them in its fstab; a share that
        cannot be mounted is a warning, not a failed start."""
        if "Shares" not in self.config:
            return
        from dockyard.provisioner.core.ssh import SSHSession  # lazy: loads paramiko

        script = shares.guest_script(self.config["Shares"])
        with SSHSession(self.ssh_target()) as s:
            r = s.run(f"sh -c {shlex.quote(script)}", sudo=True, check=False)
        if r.exit_status != 0:
            why = " ".join((r.stderr or r.stdout).split()) or f"exit {r.exit_status}"
            self.progress(
                f"Warning: the shared folders are not all mounted in the machine ({why}); does its kernel have "
                "vboxsf (Linux 5.6+, CONFIG_VBOXSF_FS)?"
            )

    # -- published ports ---------------------------------------------------------------------------------------
    def _forwarder(self):
        return ForwarderProcess(self.machine_dir, PORTFWD_MODULE)

    def _start_forwarder(self):
        """The process that forwards containers' published ports to 127.0.0.1 while this VM runs."""
        args = ["--vm", self.machine_name, "--vboxmanage", self.vbm.binary]
        args += ["--engine-host", self.ip(), "--engine-port", str(self.engine_port())]
        forwarder = self._forwarder()
        forwarder.start(args)
        self.progress(f"Published ports will answer on 127.0.0.1 (log: {forwarder.log_path})")

    def published_ports(self):
        """What the forwarder last did: {"Forwarded": {"8080/tcp": container}, "Conflicts": {...}}."""
        return self._forwarder().state()

    def _running_marker(self):
        """For the boot wait: a true value while VirtualBox says the VM runs."""
        info = self._info()
        return True if info and vbox.vm_state(info) in (State.RUNNING, State.STARTING) else None

    def _vbox_log_tail(self):
        log = os.path.join(self.machine_dir, self.machine_name, "Logs", "VBox.log")
        try:
            with open(log, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return f"\nLast line of {log}: {lines[-1]}" if lines else ""
        except OSError:
            return ""

    def _learn_ip(self):
        """The guest's address on the host-only NIC (by its MAC), asked over SSH as Docker Machine did."""
        from dockyard.provisioner.core.ssh import SSHSession

        deadline = time.monotonic() + 20
        with SSHSession(self.ssh_target()) as s:
            while True:
                ip = guest_ip_for_mac(
                    s.run("ip -o link", check=False).stdout,
                    s.run("ip -o -4 addr", check=False).stdout,
                    self.config["HostOnlyMAC"],
                )
                if ip:
                    self.config["IPAddress"] = ip
                    return
                if time.monotonic() > deadline:
                    raise DriverError(
                        f'machine "{self.machine_name}" got no address on its host-only NIC in 20s '
                        f"(is the DHCP server of {self.config['HostOnlyCIDR']} enabled?)"
                    )
                time.sleep(1)

    def stop(self):
        self._forwarder().stop()
        info = self._info()
        if info is None or vbox.vm_state(info) == State.STOPPED:
            return
        if vbox.vm_state(info) == State.PAUSED:
            self.vbm("controlvm", self.machine_name, "resume")
        self.vbm("controlvm", self.machine_name, "acpipowerbutton")
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            info = self._info()
            if info is None or vbox.vm_state(info) not in (State.RUNNING, State.STOPPING):
                return
            time.sleep(1)
        self.progress(f"The VM did not power off within {STOP_TIMEOUT:.0f}s; powering it off.")
        self.vbm("controlvm", self.machine_name, "poweroff")

    def kill(self):
        self._forwarder().stop()
        info = self._info()
        if info is not None and vbox.vm_state(info) not in (State.STOPPED, State.SAVED):
            self.vbm("controlvm", self.machine_name, "poweroff")

    def restart(self):
        self.stop()
        self.start()

    def resize(self, cpus: int | None = None, memory_mb: int | None = None, disk_mb: int | None = None) -> None:
        """modifyvm for CPUs and memory, modifymedium --resize to grow the disk (VirtualBox never shrinks one);
        the guest grows its root file system on its next boot (dockyard-growroot)."""
        changed = {
            name: value
            for name, value in (("cpus", cpus), ("memory", memory_mb), ("disk_size", disk_mb))
            if value is not None
        }
        settings = VirtualBoxSettings.from_config(self.config, **changed)
        current_mb = int(self.config["DiskSize"])
        resources.check_disk_grows(self.machine_name, current_mb, settings.disk_size)
        if cpus is not None or memory_mb is not None:
            self.vbm("modifyvm", self.machine_name, "--cpus", settings.cpus, "--memory", settings.memory)
        if settings.disk_size > current_mb:
            self.progress(f"Growing the disk to {resources.gib(settings.disk_size)}...")
            self.vbm("modifymedium", "disk", self.path("disk.vdi"), "--resize", settings.disk_size)
        self.config.update(settings.to_config())

    def remove(self):
        self._forwarder().stop()
        info = self._info()
        if info is not None:
            if vbox.vm_state(info) not in (State.STOPPED, State.SAVED):
                self.vbm("controlvm", self.machine_name, "poweroff")
            self.vbm("unregistervm", self.machine_name, "--delete")
        for name in FILES:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass


def _cpu_has_virtualization():
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return True  # not Linux: let VirtualBox itself complain
    return bool(flags & {"vmx", "svm"})
