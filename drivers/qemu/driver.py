"""The `qemu` driver: a daemonized QEMU per machine over a copy-on-write disk of the guest image, set up by
cloud-init, reached through 127.0.0.1 port forwards (user-mode networking) and controlled through QMP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from dockyard.drivers.base import POWER, Capability, Driver, State, flag_values
from dockyard.drivers.guestimage import build, debian, guestunits, resources, seed, source, tools
from dockyard.drivers.qemu import accel as accel_mod
from dockyard.drivers.qemu import boot, cmdline, shares
from dockyard.drivers.qemu.qmp import QMP, QMPError
from dockyard.drivers.qemu.settings import FLAGS, QemuSettings
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

BUILD = "build"  # --qemu-image build: dockyard's own image, built with mmdebstrap (needs root)

STOP_TIMEOUT = 90.0  # ACPI power-down under emulation takes ~5 s; a hung guest is killed after this
KILL_WAIT = 10.0
QMP_STATES = {
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "suspended": State.PAUSED,
    "debug": State.PAUSED,
    "shutdown": State.STOPPING,
    "prelaunch": State.STARTING,
    "inmigrate": State.STARTING,
    "internal-error": State.ERROR,
    "io-error": State.ERROR,
    "guest-panicked": State.ERROR,
    "watchdog": State.ERROR,
}
FILES = (
    "disk.qcow2",
    "seed.iso",
    "vmlinuz",
    "initrd",
    "qemu.pid",
    "qmp.sock",
    "serial.log",
    "serial.log.prev",
    "qemu.log",
    "portfwd.pid",
    "portfwd.log",
    "ports.json",
)
PORTFWD_MODULE = "dockyard.drivers.qemu.portfwd"


def host_kernel() -> str:
    """The running host's kernel image, when readable: a test boot under KVM needs some kernel."""
    path = f"/boot/vmlinuz-{os.uname().release}"
    return path if os.access(path, os.R_OK) else ""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    """Could a listener bind 127.0.0.1:port? (SO_REUSEADDR, as QEMU's forwards use: connections of the last
    boot lingering in TIME_WAIT do not count.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def process_alive(pid, marker=""):
    """pid runs (not a zombie) and, if marker is given, its command line contains it (guards pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        if marker:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return marker.encode() in f.read()
        return True
    except (OSError, IndexError):
        return False


def guest_ip_for_mac(link_output, addr_output, mac):
    """The IPv4 address of the interface with MAC mac, from `ip -o link` and `ip -o -4 addr` output."""
    ifname = None
    for line in link_output.splitlines():
        if f"link/ether {mac.lower()}" in line.lower():
            ifname = line.split(":", 2)[1].strip().split("@")[0]
    if not ifname:
        return ""
    for line in addr_output.splitlines():
        words = line.split()
        if len(words) >= 4 and words[1] == ifname and words[2] == "inet":
            return words[3].split("/")[0]
    return ""


class QemuDriver(Driver):
    name = "qemu"
    capabilities = POWER | {Capability.RESIZE}
    flags = FLAGS

    # -- configuration ------------------------------------------------------------------
    def set_config_from_flags(self, options: Mapping[str, Any]) -> None:
        values = flag_values(self.flags, options)
        given = resources.overrides(values)  # --cpus/--memory/--disk (GiB) win over --qemu-* (MB)
        values.update(
            qemu_cpus=given.get("cpus", values["qemu_cpus"]),
            qemu_memory=given.get("memory_mb", values["qemu_memory"]),
            qemu_disk_size=given.get("disk_mb", values["qemu_disk_size"]),
        )
        settings = QemuSettings.from_flags(values, ssh_user=build.recipe.SSH_USER)
        self.config.update(settings.to_config())
        if values["no_share"] and values["share"]:
            raise DriverError("--share and --no-share contradict each other")
        if values["no_share"] or values["share"]:  # the default (home) is chosen at create time
            self.config["Shares"] = shares.parse(values["share"], settings.ssh_user)
        base = debian.url_base(values["qemu_image_url_base"] or "")
        if base != debian.DEFAULT_URL_BASE:  # recorded only when it is not Debian's (keeps config.json as it was)
            self.config["ImageURLBase"] = base

    @property
    def cache_dir(self):
        return build.store_cache_dir(self.machine_dir)

    # -- first boot ------------------------------------------------------------------------
    _first_boot = None  # (files, command) for the seed, from set_first_boot

    def first_boot_host(self):
        # dockyard's and Debian's images: systemd and Debian's python3 (another image just gets provisioned
        # as before: its files or service differ, or its engine does not run). A bridge address is known only
        # after the boot, too late for the server certificate.
        return None if self.config.get("Network") == "bridge" else ("systemd", "/usr/bin/python3")

    def set_first_boot(self, files, command):
        self._first_boot = (list(files), command)

    # -- addresses -------------------------------------------------------------------------
    def ip(self):
        if self.config.get("Network") == "bridge":
            if not self.config.get("IPAddress"):
                raise DriverError(
                    f'machine "{self.machine_name}" has no address on bridge '
                    f"{self.config.get('Bridge')} yet (is it running?)"
                )
            return self.config["IPAddress"]
        return "127.0.0.1"

    def url(self):
        if self.config.get("Network") == "bridge":
            return super().url()
        return f"tcp://127.0.0.1:{self.config['EngineHostPort']}"

    def ssh_host(self):
        return "127.0.0.1"  # always the user-mode NIC's forward, whatever else the VM has

    # -- files --------------------------------------------------------------------------------
    def _qmp_path(self):
        p = self.path("qmp.sock")
        if len(p.encode()) < 100:  # sun_path holds 108 bytes
            return p
        digest = hashlib.sha1(os.path.abspath(self.machine_dir).encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"dockyard-qmp-{digest}.sock")

    def _pid(self):
        try:
            with open(self.path("qemu.pid")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if pid and process_alive(pid, self.path("qemu.pid")) else None

    def _qemu_log(self):
        try:
            with open(self.path("qemu.log"), errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return lines[-1] if lines else ""
        except OSError:
            return ""

    # -- checks ----------------------------------------------------------------------------------
    def pre_create_check(self):
        binary = tools.require(self.config["Binary"], "to run the VM")
        self.config["Binary"] = binary
        tools.require("qemu-img", "for the VM's copy-on-write disk")
        try:
            subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as e:
            raise PreCreateCheckError(f"{binary} does not run: {e}") from None
        image = self.config.get("Image")
        if image == BUILD:
            build.check_can_build(self.cache_dir)
        elif image:
            source.check(image, self.config.get("ImageSHA256"), "qemu-image")
        else:
            try:
                debian.debian_arch()
            except DriverError as e:
                raise PreCreateCheckError(f"{e}; give one with --qemu-image") from None
        if self.config["Accel"] == "kvm":
            dev = accel_mod.device_check()
            if not dev.usable:
                raise PreCreateCheckError(f"--qemu-accel kvm: {dev.reason}")
        if self.config.get("Network") == "bridge":
            bridge = self.config["Bridge"]
            if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
                raise PreCreateCheckError(
                    f'--qemu-network bridge={bridge}: no bridge interface "{bridge}" on this host'
                )
            if not any(
                os.path.exists(p) for p in ("/usr/lib/qemu/qemu-bridge-helper", "/usr/libexec/qemu-bridge-helper")
            ):
                raise PreCreateCheckError(
                    "--qemu-network bridge needs qemu-bridge-helper "
                    '(on Debian/Ubuntu: "apt-get install qemu-system-common")'
                )

    # -- create -------------------------------------------------------------------------------------
    def create(self):
        timings = {}
        started = time.monotonic()
        public_key = self.ensure_ssh_key()
        image = self._resolve_image()
        timings["Image"] = time.monotonic() - started

        t = time.monotonic()
        self._choose_accel(image)
        timings["AccelProbe"] = time.monotonic() - t

        t = time.monotonic()
        self.config["BaseImage"] = image.to_config()
        if image.kernel:
            for name, src in (("vmlinuz", image.kernel), ("initrd", image.initrd)):
                shutil.copyfile(src, self.path(name))
            self.config["Cmdline"] = image.cmdline
        self._make_disk(image)
        rng = random.SystemRandom()
        self.config["MAC"] = cmdline.random_mac(rng)
        nics = [seed.nic("eth0", self.config["MAC"])]
        if self.config.get("Network") == "bridge":
            self.config["BridgeMAC"] = cmdline.random_mac(rng)
            # The bridge NIC gives the routable address; the default route stays on the user-mode NIC.
            nics.append(seed.nic("eth1", self.config["BridgeMAC"], default_route=False))
        self.config["InstanceID"] = seed.instance_id(self.machine_name)
        if "Shares" not in self.config:
            self.config["Shares"], why_not = shares.default(self.ssh_user())
            if why_not:
                self.progress(f"Warning: {why_not}")
        for s in self.config["Shares"]:
            self.progress(f"Sharing {s['Path']}{' (read-only)' if s['ReadOnly'] else ''} with the machine")
        seed.write_seed(
            self.path("seed.iso"),
            seed.render(
                self.machine_name,
                self.config["InstanceID"],
                public_key,
                nics,
                user=self.ssh_user(),
                shares=self.config["Shares"],
                first_boot=self._first_boot,
            ),
        )
        self.config["GuestUnits"] = guestunits.digest()  # the seed writes them on first boot
        timings["Disk"] = time.monotonic() - t

        t = time.monotonic()
        for attempt in range(3):
            self.config["SSHPort"], self.config["EngineHostPort"] = free_port(), free_port()
            try:
                self._launch()
                break
            except _PortTaken:
                if attempt == 2:
                    raise DriverError(
                        "QEMU could not bind its 127.0.0.1 port forwards three times in a row; "
                        f"see {self.path('qemu.log')}"
                    ) from None
        timings["Launch"] = time.monotonic() - t
        self.progress(f"Waiting for the VM to boot (serial console: {self.path('serial.log')})...")
        timings["BootToSSH"] = self._wait_booted()
        self.config["Timings"] = {k: round(v, 2) for k, v in timings.items()}
        self._start_forwarder()

    def _resolve_image(self):
        image = self.config.get("Image")
        if image == BUILD:
            return build.ensure_image(self.cache_dir, self.progress)
        if image:
            return source.resolve(image, self.config.get("ImageSHA256"), self.cache_dir, self.progress)
        try:
            return debian.ensure(debian.url_base(self.config.get("ImageURLBase") or ""), self.cache_dir, self.progress)
        except debian.DownloadUnavailable as e:
            try:
                build.check_can_build(self.cache_dir)
            except PreCreateCheckError as why:
                raise DriverError(
                    f"{e}; the fallback, building dockyard's own image with mmdebstrap, is not possible here "
                    f"either: {why.cause}"
                ) from None
            self.progress(f"Warning: {e}; building dockyard's own image with mmdebstrap instead")
            return build.ensure_image(self.cache_dir, self.progress)

    def _choose_accel(self, image):
        kernel = image.kernel
        if not kernel:  # a cloud image boots through its own loader; test KVM with a kernel we can read
            own = build.cached_image(self.cache_dir)
            kernel = own.kernel if own else host_kernel()
        chosen, warning = accel_mod.choose(
            self.config["Accel"],
            lambda: accel_mod.probe(self.config["Binary"], kernel, build.cache_root(self.cache_dir)),
        )
        if warning:
            self.progress(f"Warning: {warning}.")
        self.config["AccelUsed"] = chosen

    def _make_disk(self, image):
        qemu_img = tools.find("qemu-img") or "qemu-img"
        info = json.loads(
            subprocess.run(
                [qemu_img, "info", "--output=json", image.disk], capture_output=True, text=True, check=True
            ).stdout
        )
        base_mb = -(-int(info["virtual-size"]) // (1 << 20))
        size_mb = int(self.config["DiskSize"])
        if size_mb < base_mb:
            raise DriverError(f"--qemu-disk-size {size_mb} is smaller than the image ({base_mb} MB)")
        p = subprocess.run(
            [
                qemu_img,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                image.format,
                "-b",
                image.disk,
                self.path("disk.qcow2"),
                f"{size_mb}M",
            ],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise DriverError(f"cannot create the VM's disk: {p.stderr.strip()}")

    # -- running QEMU ------------------------------------------------------------------------------------
    def spec(self):
        c = self.config
        direct = bool(c.get("Cmdline"))
        return cmdline.VMSpec(
            name=self.machine_name,
            binary=c["Binary"],
            accel=c.get("AccelUsed") or "tcg",
            cpus=int(c["CPUs"]),
            memory_mb=int(c["Memory"]),
            disk=self.path("disk.qcow2"),
            seed=self.path("seed.iso"),
            kernel=self.path("vmlinuz") if direct else "",
            initrd=self.path("initrd") if direct else "",
            append=c.get("Cmdline", ""),
            ssh_port=int(c["SSHPort"]),
            engine_host_port=int(c["EngineHostPort"]),
            engine_guest_port=self.engine_port(),
            mac=c["MAC"],
            restrict=bool(c.get("Restrict")),
            bridge=c.get("Bridge", "") if c.get("Network") == "bridge" else "",
            bridge_mac=c.get("BridgeMAC", ""),
            pidfile=self.path("qemu.pid"),
            qmp=self._qmp_path(),
            serial_log=self.path("serial.log"),
            shares=list(c.get("Shares") or []),
        )

    def _launch(self):
        serial = self.path("serial.log")
        if os.path.exists(serial):
            os.replace(serial, serial + ".prev")  # keep the previous boot's console for diagnosis
        for stale in (self.path("qemu.pid"), self._qmp_path()):
            if os.path.exists(stale):
                os.unlink(stale)
        with open(self.path("qemu.log"), "w") as errf:
            p = subprocess.run(
                cmdline.build(self.spec()), stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, cwd=self.machine_dir
            )
        if p.returncode != 0:
            with open(self.path("qemu.log"), errors="replace") as f:
                text = f.read().strip()
            if "host forwarding rule" in text:
                raise _PortTaken(text)
            raise DriverError(f"QEMU did not start (exit {p.returncode}): {text[-800:] or 'no output'}")

    def _wait_booted(self):
        took = boot.wait_for_login(
            self.machine_name,
            self.ssh_target(),
            self._pid,
            self.path("serial.log"),
            0,
            float(self.config.get("BootTimeout") or 300),
            self._qemu_log,
            progress_fn=self.progress,
        )
        if self.config.get("Network") == "bridge":
            self._learn_bridge_ip()
        return took

    def _ensure_guest_units(self):
        """A machine made by an older dockyard lacks (some of) the guest units (growroot: `set --disk`; clock
        sync): install them over SSH once, when the recorded set differs from this dockyard's."""
        if self.config.get("GuestUnits") == guestunits.digest():
            return
        from dockyard.provisioner.core.ssh import SSHSession  # lazy: paramiko is slow to import

        self.progress("Installing dockyard's guest units (root file system growth, clock sync)...")
        with SSHSession(self.ssh_target()) as s:
            r = s.run(guestunits.install_script(), sudo=True, check=False)
        if r.exit_status != 0:  # the machine runs all the same; the next start tries again
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no message"]
            self.progress(f"Warning: installing dockyard's guest units failed (exit {r.exit_status}): {why[0]}")
            return
        self.config["GuestUnits"] = guestunits.digest()

    def _learn_bridge_ip(self):
        from dockyard.provisioner.core.ssh import SSHSession

        deadline = time.monotonic() + 60
        with SSHSession(self.ssh_target()) as s:
            while time.monotonic() < deadline:
                links = s.run("ip -o link", check=False).stdout
                addrs = s.run("ip -o -4 addr", check=False).stdout
                ip = guest_ip_for_mac(links, addrs, self.config["BridgeMAC"])
                if ip:
                    self.config["IPAddress"] = ip
                    return
                time.sleep(1)
        raise DriverError(
            f'machine "{self.machine_name}" got no IPv4 address on bridge {self.config["Bridge"]} '
            "in 60s: is there a DHCP server on it?"
        )

    def _wait_exit(self, pid, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return True
            time.sleep(0.2)
        return not process_alive(pid)

    def _terminate(self, pid):
        for sig, wait in ((signal.SIGTERM, KILL_WAIT), (signal.SIGKILL, KILL_WAIT)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_exit(pid, wait):
                return
        raise DriverError(f"QEMU (pid {pid}) did not exit after SIGKILL")

    # -- published ports --------------------------------------------------------------------------------
    def _forwarder_pid(self):
        try:
            with open(self.path("portfwd.pid")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if pid and process_alive(pid, PORTFWD_MODULE) else None

    def _start_forwarder(self):
        """The process that forwards containers' published ports to 127.0.0.1 while this VM runs."""
        self._stop_forwarder()
        pid = self._pid()
        if not pid:
            return
        import dockyard  # the forwarder runs from the same package as this driver, installed or not

        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dockyard.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
        argv = [sys.executable, "-m", PORTFWD_MODULE, "--machine-dir", os.path.abspath(self.machine_dir)]
        argv += ["--qmp", self._qmp_path(), "--engine-port", str(self.config["EngineHostPort"])]
        argv += ["--qemu-pid", str(pid)]
        with open(self.path("portfwd.log"), "a") as log:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True, cwd="/"
            )
        with open(self.path("portfwd.pid"), "w") as f:
            f.write(f"{p.pid}\n")
        self.progress(f"Published ports will answer on 127.0.0.1 (log: {self.path('portfwd.log')})")

    def _stop_forwarder(self):
        pid = self._forwarder_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self._wait_exit(pid, KILL_WAIT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path("portfwd.pid"))

    def published_ports(self):
        """What the forwarder last did: {"Forwarded": {"8080/tcp": container}, "Conflicts": {...}}."""
        try:
            with open(self.path("ports.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # -- lifecycle --------------------------------------------------------------------------------------
    def state(self):
        pid = self._pid()
        if not pid:
            return State.STOPPED
        try:
            with QMP(self._qmp_path(), timeout=3) as q:
                status = q.execute("query-status").get("status", "")
        except QMPError:
            # QMP serves one client at a time; a busy monitor does not mean the VM is unwell.
            return State.RUNNING if process_alive(pid) else State.STOPPED
        return QMP_STATES.get(status, State.RUNNING)

    def start(self):
        if self._pid():
            return
        base = self.config.get("BaseImage", {}).get("disk", "")
        if not os.path.exists(self.path("disk.qcow2")):
            raise DriverError(
                f'machine "{self.machine_name}" has no disk ({self.path("disk.qcow2")}); remove it and create it again'
            )
        if base and not os.path.exists(base):
            raise DriverError(
                f"the guest image {base} that this machine's disk is based on is gone (cache "
                "cleared?); the machine cannot start; remove it and create it again"
            )
        for key in ("SSHPort", "EngineHostPort"):
            if not port_free(int(self.config[key])):
                raise DriverError(
                    f"cannot start: 127.0.0.1:{self.config[key]}, the machine's "
                    f"{'SSH' if key == 'SSHPort' else 'engine'} port, is in use by another program; "
                    "the machine keeps its ports so its URL stays the same"
                )
        try:
            self._launch()
        except _PortTaken as e:
            raise DriverError(f"cannot start: {e}") from None
        if self.config.get("Network") == "bridge":
            self.config.pop("IPAddress", None)  # DHCP may hand out another one; learnt again below
        took = self._wait_booted()
        self.config.setdefault("Timings", {})["LastStartToSSH"] = round(took, 2)
        self._ensure_guest_units()
        self._start_forwarder()

    def stop(self):
        self._stop_forwarder()
        pid = self._pid()
        if not pid:
            return
        try:
            with QMP(self._qmp_path()) as q:
                q.execute("system_powerdown")
        except QMPError:
            pass  # no QMP: fall through to the timeout and kill
        if not self._wait_exit(pid, STOP_TIMEOUT):
            self.progress(f"The VM did not power off within {STOP_TIMEOUT:.0f}s; killing QEMU.")
            self._terminate(pid)

    def kill(self):
        self._stop_forwarder()
        pid = self._pid()
        if not pid:
            return
        try:
            with QMP(self._qmp_path()) as q:
                q.execute("quit")  # immediate, like pulling the plug, but QEMU flushes its disk metadata
        except QMPError:
            pass
        if not self._wait_exit(pid, KILL_WAIT):
            self._terminate(pid)

    def restart(self):
        self.stop()
        self.start()

    def resize(self, cpus: int | None = None, memory_mb: int | None = None, disk_mb: int | None = None) -> None:
        """New CPUs/memory take effect on the next start (they are QEMU flags); the disk grows at once with
        qemu-img resize and the guest grows its root file system on its next boot (dockyard-growroot)."""
        changed: dict[str, Any] = {"network": self.config.get("Network", "user")}
        if changed["network"] == "bridge":  # config.json records the mode and the name apart; the check wants both
            changed["network"] = f"bridge={self.config.get('Bridge', '')}"
        for name, value in (("cpus", cpus), ("memory", memory_mb), ("disk_size", disk_mb)):
            if value is not None:
                changed[name] = value
        settings = QemuSettings.from_config(self.config, **changed)
        if disk_mb is not None:
            disk = self.path("disk.qcow2")
            current_mb = -(-int(self._disk_info(disk)["virtual-size"]) // (1 << 20))
            resources.check_disk_grows(self.machine_name, current_mb, settings.disk_size)
            if settings.disk_size > current_mb:
                self.progress(f"Growing the disk to {resources.gib(settings.disk_size)}...")
                p = subprocess.run(
                    [tools.find("qemu-img") or "qemu-img", "resize", "-q", disk, f"{settings.disk_size}M"],
                    capture_output=True,
                    text=True,
                )
                if p.returncode != 0:
                    raise DriverError(f"cannot grow the disk {disk}: {p.stderr.strip()}")
        self.config.update(settings.to_config())

    def _disk_info(self, disk: str) -> dict[str, Any]:
        if not os.path.exists(disk):
            raise DriverError(f'machine "{self.machine_name}" has no disk ({disk}); remove it and create it again')
        p = subprocess.run(
            [tools.find("qemu-img") or "qemu-img", "info", "--output=json", disk], capture_output=True, text=True
        )
        if p.returncode != 0:
            raise DriverError(f"cannot read the disk {disk}: {p.stderr.strip()}")
        return json.loads(p.stdout)

    def remove(self):
        self._stop_forwarder()
        pid = self._pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not self._wait_exit(pid, KILL_WAIT):
                raise DriverError(f"QEMU (pid {pid}) did not exit after SIGKILL")
        for name in FILES:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
        try:
            os.unlink(self._qmp_path())
        except FileNotFoundError:
            pass


class _PortTaken(DriverError):
    """QEMU could not bind a host forward (another program took the port after we picked it)."""
