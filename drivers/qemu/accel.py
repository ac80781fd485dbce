"""Choosing KVM or TCG: check /dev/kvm at the ioctl level, then really boot a kernel under KVM; cached per host boot.

On some hosts /dev/kvm exists but cannot run a stock kernel (for example a nested "PVM" KVM that stops
with an emulation failure or crawls), so a file check alone would pick an accelerator that hangs.
"""

import fcntl
import json
import os
import select
import subprocess
import time

from dockyard.provisioner.core.errors import PreCreateCheckError
from dockyard.provisioner.core.files import atomic_write

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PROBE_TIMEOUT = 15.0
CACHE_FILE = "kvm-probe.json"


class Probe:
    def __init__(self, usable, reason, seconds=0.0):
        self.usable, self.reason, self.seconds = usable, reason, seconds

    def to_dict(self):
        return {"usable": self.usable, "reason": self.reason, "seconds": round(self.seconds, 2)}

    def __repr__(self):
        return f"Probe(usable={self.usable}, reason={self.reason!r})"


def device_check(device="/dev/kvm"):
    """Cheap check: the device exists, we may open it read-write, and it speaks KVM API 12."""
    if not os.path.exists(device):
        return Probe(False, f"{device} does not exist (no KVM module loaded, or hardware virtualization is off)")
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return Probe(False, f'cannot open {device}: {e.strerror} (add yourself to the group owning it, usually "kvm")')
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return Probe(False, f"{device} does not answer KVM_GET_API_VERSION: {e.strerror}")
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return Probe(False, f"{device} speaks KVM API {version}, expected {KVM_API_VERSION}")
    return Probe(True, "device ok")


def boot_check(qemu, kernel, timeout=PROBE_TIMEOUT, accel="kvm"):
    """Boot `kernel` under KVM with no root disk: reaching the "cannot mount root" panic proves that KVM runs
    a whole kernel start-up; an error exit or no progress within timeout means it does not.
    (accel="tcg" runs the same check under emulation, to test the check itself.)"""
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    cmd = [
        qemu,
        "-accel",
        accel,
        *cpu,
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 loglevel=4",
    ]
    started = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        reached = "the kernel started but" if "Linux version" in out else "no kernel output"
        return Probe(
            False,
            f"a test kernel made too little progress under {accel.upper()} in {timeout:g}s ({reached})",
            time.monotonic() - started,
        )
    except OSError as e:
        return Probe(False, f"cannot run {qemu}: {e.strerror}")
    seconds = time.monotonic() - started
    out = p.stdout.decode(errors="replace")
    if "Kernel panic" in out or "VFS: Unable to mount root" in out:
        return Probe(True, f"a test kernel booted under {accel.upper()} in {seconds:.1f}s", seconds)
    err = [line for line in p.stderr.decode(errors="replace").splitlines() if line.strip()]
    detail = err[-1] if err else (out.strip().splitlines() or ["no output"])[-1]
    return Probe(False, f"a test kernel failed under {accel.upper()} (exit {p.returncode}): {detail[:200]}", seconds)


def firmware_check(qemu, timeout=PROBE_TIMEOUT, accel="kvm"):
    """Without a kernel to test-boot (a cloud image boots through its own loader): run the firmware alone under
    KVM; SeaBIOS reaching "No bootable device" (on its debug port) proves KVM runs guest code, while a
    broken KVM aborts QEMU or makes no progress."""
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    cmd = [qemu, "-accel", accel, *cpu, "-m", "64", "-nodefaults", "-no-user-config", "-display", "none"]
    cmd += ["-monitor", "none", "-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
    started = time.monotonic()
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        return Probe(False, f"cannot run {qemu}: {e.strerror}")
    out = b""
    try:
        assert p.stdout is not None
        while time.monotonic() - started < timeout:
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                if b"No bootable device" in out or b"Booting from" in out:
                    seconds = time.monotonic() - started
                    return Probe(True, f"the firmware ran under {accel.upper()} in {seconds:.1f}s", seconds)
            elif p.poll() is not None:
                break
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    seconds = time.monotonic() - started
    lines = [line for line in err.splitlines() if line.strip()]
    detail = lines[-1][:200] if lines else "no progress"
    return Probe(False, f"the firmware failed under {accel.upper()} (exit {p.returncode}): {detail}", seconds)


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cache_key(qemu, kernel, device):
    def mtime(p):
        try:
            return int(os.stat(p).st_mtime)
        except OSError:
            return 0

    return {
        "boot_id": _boot_id(),
        "qemu": qemu,
        "qemu_mtime": mtime(qemu),
        "kernel": kernel,
        "kernel_mtime": mtime(kernel),
        "device": device,
    }


def probe(qemu, kernel, cache_dir, device="/dev/kvm", timeout=PROBE_TIMEOUT):
    """Is KVM usable for this qemu and kernel? The answer is cached in cache_dir until the host reboots."""
    key = _cache_key(qemu, kernel, device)
    path = os.path.join(cache_dir, CACHE_FILE)
    try:
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            r = cached["result"]
            return Probe(r["usable"], r["reason"], r.get("seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = device_check(device)
    if result.usable:
        result = boot_check(qemu, kernel, timeout) if kernel else firmware_check(qemu, timeout)
    try:
        atomic_write(path, json.dumps({"key": key, "result": result.to_dict()}), 0o644, durable=False)
    except OSError:
        pass  # a cache we cannot write only costs another probe
    return result


def choose(requested, probe_fn):
    """("kvm" | "tcg", warning or None) for --qemu-accel requested (auto, kvm, tcg).
    probe_fn() -> Probe is called only when KVM is a candidate."""
    if requested == "tcg":
        return "tcg", None
    result = probe_fn()
    if result.usable:
        return "kvm", None
    if requested == "kvm":
        raise PreCreateCheckError(
            f"--qemu-accel kvm was asked for, but KVM is not usable: {result.reason}. "
            f"Use --qemu-accel tcg (software emulation) or auto"
        )
    return "tcg", (f"KVM is not usable ({result.reason}); using TCG software emulation, which is several times slower")
