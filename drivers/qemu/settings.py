"""The qemu driver's create flags and its typed settings (what config.json records), apart from the driver."""

from __future__ import annotations

import dataclasses
import platform

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.guestimage import debian, resources
from dockyard.drivers.qemu import cmdline
from dockyard.provisioner.core.errors import DriverError


def host_binary(machine: str = "") -> str:
    """qemu-system-<arch> for this host (the emulator that can use KVM here)."""
    m = machine or platform.machine()
    return "qemu-system-" + {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclasses.dataclass(kw_only=True)  # keyword-only: the derived field with a placeholder sits between the others
class QemuSettings(Settings):
    binary: str = setting("Binary", flag="qemu_binary")
    accel: str = setting("Accel", flag="qemu_accel")
    cpus: int = setting("CPUs", flag="qemu_cpus")
    memory: int = setting("Memory", flag="qemu_memory")
    disk_size: int = setting("DiskSize", flag="qemu_disk_size")
    network: str = setting("Network", flag="qemu_network")  # the flag's "user" or "bridge=NAME"; then the mode
    bridge: str = setting("Bridge", derived="")  # the bridge's name, from --qemu-network
    restrict: bool = setting("Restrict", flag="qemu_restrict")
    boot_timeout: int = setting("BootTimeout", flag="qemu_boot_timeout")
    image: str = setting("Image", flag="qemu_image")
    image_sha256: str = setting("ImageSHA256", flag="qemu_image_sha256")
    ssh_user: str = setting("SSHUser")

    def __post_init__(self) -> None:
        self.accel = str(self.accel).lower()
        if self.accel not in ("auto", "kvm", "tcg"):
            raise DriverError(f'invalid --qemu-accel "{self.accel}": expected auto, kvm or tcg')
        self.cpus, self.memory = int(self.cpus), int(self.memory)
        self.disk_size, self.boot_timeout = int(self.disk_size), int(self.boot_timeout)
        if self.cpus < 1 or self.memory < 256 or self.disk_size < 1024 or self.boot_timeout < 10:
            raise DriverError(
                "--qemu-cpus must be >= 1, --qemu-memory >= 256 (MB), --qemu-disk-size >= 1024 (MB) "
                "and --qemu-boot-timeout >= 10 (s)"
            )
        try:
            self.network, self.bridge = cmdline.parse_network(self.network)
        except ValueError as e:
            raise DriverError(str(e)) from None
        if self.restrict and self.network == "bridge":
            raise DriverError(
                "--qemu-restrict cuts the VM off every network; it cannot be combined with --qemu-network bridge=NAME"
            )
        self.image, self.image_sha256 = self.image or "", (self.image_sha256 or "").lower()


FLAGS = [
    Flag("qemu-binary", "QEMU system emulator to run", default=host_binary(), envvar="QEMU_BINARY"),
    Flag(
        "qemu-accel",
        "Acceleration: auto (KVM if it really works, else TCG), kvm or tcg",
        default="auto",
        envvar="QEMU_ACCEL",
    ),
    Flag("qemu-cpus", "Number of virtual CPUs", default=resources.default_cpus(), type=int, envvar="QEMU_CPUS"),
    Flag("qemu-memory", "Memory in MB", default=resources.DEFAULT_MEMORY_MB, type=int, envvar="QEMU_MEMORY"),
    Flag("qemu-disk-size", "Disk size in MB", default=resources.DEFAULT_DISK_MB, type=int, envvar="QEMU_DISK_SIZE"),
    *resources.FLAGS,
    Flag(
        "qemu-network",
        'Networking: "user" (127.0.0.1 port forwards) or "bridge=NAME" (adds a NIC on '
        "bridge NAME through qemu-bridge-helper, for a routable address)",
        default="user",
        envvar="QEMU_NETWORK",
    ),
    Flag(
        "qemu-restrict",
        "Cut the VM off from every network but its 127.0.0.1 forwards "
        "(user-mode restrict=on; containers then have no outbound access)",
        is_flag=True,
        envvar="QEMU_RESTRICT",
    ),
    Flag(
        "qemu-image",
        "Guest image: a path or http(s) URL of a cloud image (qcow2, raw, vdi) with cloud-init, or "
        "\"build\" for dockyard's own Debian image built with mmdebstrap (needs root); default: Debian's "
        "official cloud image for this host (downloaded once, verified against its SHA512SUMS, cached; "
        "built instead when it cannot be downloaded)",
        envvar="QEMU_IMAGE",
    ),
    Flag(
        "qemu-image-url-base",
        "Where Debian's cloud image and its SHA512SUMS are downloaded from",
        default=debian.DEFAULT_URL_BASE,
        envvar=debian.URL_BASE_ENV,
    ),
    Flag("qemu-image-sha256", "sha256 of --qemu-image (required for URLs)", envvar="QEMU_IMAGE_SHA256"),
    Flag(
        "share",
        "Share a laptop folder with the machine at the same path (PATH or PATH:ro; repeatable; "
        "default: your home directory)",
        multiple=True,
    ),
    Flag("no-share", "Share no laptop folder with the machine", is_flag=True),
    Flag(
        "qemu-boot-timeout",
        "Seconds to wait for the VM to accept SSH log-ins",
        default=300,
        type=int,
        envvar="QEMU_BOOT_TIMEOUT",
    ),
]
