"""`--cpus`, `--memory` and `--disk`: one meaning and one unit (GiB) for every local VM driver; they override
the driver's own, older flags (`--qemu-memory` and `--virtualbox-memory` in MB, ...), whose defaults are the
same for both drivers: half the host's CPUs up to 4, 2 GiB of memory, a 20 GiB disk."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dockyard.drivers.base import Flag
from dockyard.provisioner.core.errors import DriverError

DEFAULT_MEMORY_MB = 2048
DEFAULT_DISK_MB = 20 * 1024


def default_cpus() -> int:
    """Half the host's CPUs, at least 1 and at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


FLAGS = [
    Flag("cpus", "Virtual CPUs (default: half the host's, at most 4)", type=int, envvar="DOCKYARD_CPUS"),
    Flag("memory", "Memory in GiB, e.g. 2 or 1.5 (default 2)", type=float, envvar="DOCKYARD_MEMORY"),
    Flag("disk", "Disk size in GiB (default 20)", type=int, envvar="DOCKYARD_DISK"),
]


def overrides(values: Mapping[str, Any]) -> dict[str, int]:
    """{"cpus", "memory_mb", "disk_mb"} for those of --cpus/--memory/--disk that were given (checked)."""
    out: dict[str, int] = {}
    if values.get("cpus") is not None:
        if int(values["cpus"]) < 1:
            raise DriverError("--cpus must be at least 1")
        out["cpus"] = int(values["cpus"])
    if values.get("memory") is not None:
        mb = int(round(float(values["memory"]) * 1024))
        if mb < 256:
            raise DriverError("--memory must be at least 0.25 (GiB)")
        out["memory_mb"] = mb
    if values.get("disk") is not None:
        if int(values["disk"]) < 1:
            raise DriverError("--disk must be at least 1 (GiB)")
        out["disk_mb"] = int(values["disk"]) * 1024
    return out


def gib(mb: int) -> str:
    """MB as the GiB the flags speak: 20480 -> "20 GiB", 1536 -> "1.5 GiB"."""
    return f"{mb / 1024:g} GiB"


def check_disk_grows(machine: str, current_mb: int, wanted_mb: int) -> None:
    """A disk only grows: shrinking would cut off the end of the guest's file system."""
    if wanted_mb < current_mb:
        raise DriverError(
            f'cannot shrink the disk of "{machine}" from {gib(current_mb)} to {gib(wanted_mb)}: disks only grow'
        )
