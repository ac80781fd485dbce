"""Waiting for a booting VM to accept our SSH key, and saying how far the boot got when it does not."""

import os
import re
import socket
import time

from dockyard.provisioner.core.errors import DriverError, HostKeyChanged, SSHError
from dockyard.provisioner.core.ssh import SSHSession

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_serial(path, offset=0, limit=4 << 20):
    """The serial console output since offset (ANSI colours removed)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except OSError:
        return ""
    return ANSI.sub("", data.decode(errors="replace")).replace("\r", "")


def progress(serial):
    """How far a boot got, from its serial console text."""
    return {
        "kernel": "Linux version" in serial,
        "panic": "Kernel panic" in serial,
        "init": "Run /init" in serial or "Welcome to" in serial or "systemd[1]" in serial,
        "systemd": "Welcome to" in serial or "systemd[1]" in serial,
        "cloud_init_started": "running 'init-local'" in serial or "running 'init'" in serial,
        "cloud_init_done": bool(re.search(r"Cloud-init v\. \S+ finished", serial)),
        "login_prompt": " login:" in serial,
    }


def ssh_banner(host, port, timeout=2.0):
    """True when the port sends an SSH identification line (QEMU's forward accepts before sshd listens)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = s.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"SSH-") or b"\nSSH-" in data
    except OSError:
        return False


def describe(name, pid, serial, ssh_addr, banner, ssh_error, serial_path, qemu_log="", what="QEMU process"):
    """A stalled or failed boot, stage by stage, ending with where to look. pid: an int, True, or None."""
    p = progress(serial)
    running = f"running (pid {pid})" if isinstance(pid, int) and pid is not True else "running"
    parts = [f"{what}: {running if pid else 'not running'}"]
    if qemu_log:
        parts[0] += f" - {qemu_log}"
    if p["panic"]:
        parts.append("the guest kernel panicked")
    parts.append("kernel: " + ("started" if p["kernel"] else "no output on the serial console yet"))
    if p["kernel"]:
        parts.append("systemd: " + ("started" if p["systemd"] else "not reached"))
    if p["systemd"]:
        parts.append(
            "cloud-init: "
            + (
                "done"
                if p["cloud_init_done"]
                else "running, not finished"
                if p["cloud_init_started"]
                else "not started"
            )
        )
    if banner:
        parts.append(f"SSH {ssh_addr}: sshd answers, but log-in failed: {ssh_error or 'unknown error'}")
    else:
        parts.append(f"SSH {ssh_addr}: no SSH banner yet (sshd not listening)")
    tail = [line for line in serial.splitlines() if line.strip()][-12:]
    text = f'machine "{name}": ' + "; ".join(parts) + f".\nSerial console log: {serial_path}"
    if tail:
        text += "\nIts last lines:\n  " + "\n  ".join(line[:200] for line in tail)
    return text


STAGES = (
    ("kernel", "kernel started"),
    ("systemd", "init (systemd) started"),
    ("cloud_init_started", "cloud-init running"),
    ("cloud_init_done", "cloud-init finished"),
)


class StageReporter:
    """Reports each boot stage once, in order, as the serial console (and SSH) reach it."""

    def __init__(self, progress, started):
        self.progress, self.started, self.seen = progress, started, set()

    def report(self, key, text):
        if self.progress and key not in self.seen:
            self.seen.add(key)
            self.progress(f"  Boot: {text} ({time.monotonic() - self.started:.0f}s)")

    def serial(self, serial):
        reached = progress(serial)
        for key, text in STAGES:
            if reached[key]:
                self.report(key, text)


def wait_for_login(
    name,
    target,
    pid_fn,
    serial_path,
    serial_offset,
    timeout,
    qemu_log_fn=lambda: "",
    what="QEMU process",
    progress_fn=None,
):
    """Poll until SSH log-in with the machine's key works. Raises DriverError describing the stage reached
    when QEMU dies, the kernel panics, or timeout passes. Returns the seconds it took.
    progress_fn: gets one line per boot stage reached (firmware, kernel, init, cloud-init, SSH)."""
    started = time.monotonic()
    deadline = started + timeout
    banner, last_error = False, ""
    stages = StageReporter(progress_fn, started)
    stages.report("firmware", "firmware started")
    addr = f"{target.host}:{target.port}"
    while True:
        pid = pid_fn()
        if not pid:
            raise DriverError(
                f"the {what} stopped while the machine was booting: "
                + describe(
                    name,
                    None,
                    read_serial(serial_path, serial_offset),
                    addr,
                    banner,
                    last_error,
                    serial_path,
                    qemu_log_fn(),
                    what,
                )
            )
        if not banner:
            banner = ssh_banner(target.host, target.port)
        if banner:
            stages.serial(read_serial(serial_path, serial_offset))
            stages.report("ssh", "SSH answers")
            try:
                SSHSession(target, connect_timeout=10).close()
                stages.report("login", "logged in")
                return time.monotonic() - started
            except HostKeyChanged:
                raise
            except SSHError as e:  # key not installed yet (cloud-init still running), or sshd restarting
                last_error = str(e)
        serial = read_serial(serial_path, serial_offset)
        stages.serial(serial)
        if "Kernel panic" in serial:
            raise DriverError(
                "the guest kernel panicked while booting: "
                + describe(name, pid, serial, addr, banner, last_error, serial_path, what=what)
            )
        if time.monotonic() > deadline:
            raise DriverError(
                f"timed out after {timeout:g}s waiting for SSH log-in: "
                + describe(name, pid, serial, addr, banner, last_error, serial_path, what=what)
            )
        time.sleep(0.5)


def serial_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
