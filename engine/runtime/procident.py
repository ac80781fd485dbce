"""A process named so that it cannot be recycled: its PID plus its start time (field 22 of
/proc/<pid>/stat, clock ticks since boot), held open as a pidfd where the kernel has them (5.3+).

A PID alone names whatever process the kernel handed that number to last: once a container's
init has exited and been reaped, its PID can belong to any host process, and /proc/<pid>/ns/* or
/proc/<pid>/root would then lead into the host. Pinned.open() checks the start time the engine
recorded while the init was certainly alive (its supervisor had not reaped it), and
Pinned.check() confirms, after the /proc files were opened, that the same process still runs:
a pidfd turns readable once its process has exited, and a PID is only reused after that.
"""

from __future__ import annotations

import os
import select

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Optional


class ProcessGone(ProcessLookupError):
    """The process has exited (or its PID now belongs to another process)."""


def start_time(pid: int) -> int:
    """Field 22 (starttime) of /proc/<pid>/stat; ProcessGone when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone("process %d does not exist" % pid) from None
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):  # field 3: state; a zombie has exited
        raise ProcessGone("process %d has exited" % pid)
    return int(rest[19])


class Pinned:
    """One process, checked against the start time recorded for it. Use as a context manager."""

    def __init__(self, pid: int, expected_start: Optional[int]) -> None:
        self.pid = int(pid)
        self.expected_start = expected_start
        self.pidfd = -1

    def open(self) -> "Pinned":
        """Pin the process; ProcessGone when it is not the one recorded (exited, PID reused)."""
        if self.pid <= 0:
            raise ProcessGone("no process")
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                raise ProcessGone("process %d does not exist" % self.pid) from None
            except OSError:
                self.pidfd = -1  # ENOSYS: a kernel before 5.3; the start time still guards
        self.check()
        return self

    def check(self) -> None:
        """Raise ProcessGone unless the pinned process still runs (call after using /proc/<pid>)."""
        if self.pidfd >= 0 and select.select([self.pidfd], [], [], 0)[0]:
            raise ProcessGone("process %d has exited" % self.pid)
        started = start_time(self.pid)
        if self.expected_start is not None and started != int(self.expected_start):
            raise ProcessGone("process %d is not the one recorded (PID reused)" % self.pid)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self) -> "Pinned":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_running(pid: int, expected_start: Optional[int]) -> bool:
    """True when `pid` is still the process that started at `expected_start` (None: any live one)."""
    try:
        with Pinned(pid, expected_start):
            return True
    except ProcessGone:
        return False
