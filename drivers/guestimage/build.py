"""Build dockyard's guest image once (mmdebstrap -> ext4 -> qcow2 + kernel + initrd) and cache it by recipe hash."""

import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import shutil
import subprocess
import time

from dockyard.drivers.guestimage import recipe, tools
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

CACHE_ENV = "DOCKYARD_IMAGE_CACHE"
MIRROR_ENV = "DOCKYARD_DEBIAN_MIRROR"
INFO = "image.json"


def cache_root(store_cache_dir):
    """Where images live: $DOCKYARD_IMAGE_CACHE (shared between stores) or the store's cache/images."""
    root = os.environ.get(CACHE_ENV) or os.path.join(store_cache_dir, "images")
    os.makedirs(root, mode=0o755, exist_ok=True)
    return os.path.abspath(root)


def store_cache_dir(machine_dir):
    """The store's cache/ for a machine dir (STORE/machines/NAME)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(machine_dir))), "cache")


@dataclasses.dataclass
class GuestImage:
    """A bootable disk image and, for direct kernel boot, its kernel, initrd and command line."""

    disk: str
    format: str = "qcow2"
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    isolinux: str = ""  # directory with isolinux.bin and ldlinux.c32 (for a boot ISO), if any
    ssh_user: str = recipe.SSH_USER
    description: str = ""

    def to_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, data):
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in fields})


def image_dir(cache_dir):
    return os.path.join(cache_root(cache_dir), f"{recipe.IMAGE_NAME}-{recipe.recipe_hash()[:16]}")


def cached_image(cache_dir):
    """The built image for the current recipe, or None."""
    d = image_dir(cache_dir)
    try:
        with open(os.path.join(d, INFO)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return GuestImage(
        disk=os.path.join(d, "disk.qcow2"),
        kernel=os.path.join(d, "vmlinuz"),
        initrd=os.path.join(d, "initrd"),
        cmdline=info.get("cmdline", recipe.KERNEL_CMDLINE),
        isolinux=os.path.join(d, "isolinux"),
        description=f"{recipe.IMAGE_NAME} (recipe {info.get('recipe', '?')[:12]})",
    )


def check_can_build(cache_dir):
    """Pre-create check: the image is cached, or everything needed to build it is here."""
    if cached_image(cache_dir):
        return
    tools.require("mmdebstrap", "to build the guest image")
    tools.require("mkfs.ext4", "to build the guest image")
    tools.require("qemu-img", "to build the guest image")
    if os.geteuid() != 0:
        raise PreCreateCheckError(
            "building the guest image needs root once (mmdebstrap in root mode): run this create as root, "
            f"or build it as root into a shared cache with {CACHE_ENV}=DIR, or pass an image with --*-image"
        )
    if not glob.glob("/usr/share/keyrings/debian-archive-keyring.gpg"):
        raise PreCreateCheckError(
            'the Debian archive keyring is missing (on Debian/Ubuntu: "apt-get install debian-archive-keyring")'
        )


# -- mirror ---------------------------------------------------------------------------------------


def _apt_entries():
    """(uri, suite) pairs of the host's apt sources (one-line and deb822 formats)."""
    entries = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with contextlib.suppress(OSError):
            for stanza in open(path).read().split("\n\n"):
                fields, last = {}, None
                for line in stanza.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0] in " \t" and last:
                        fields[last] += " " + line.strip()
                    elif ":" in line:
                        last, value = line.split(":", 1)
                        last = last.strip().lower()
                        fields[last] = value.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                    uris, suites = fields.get("uris", "").split(), fields.get("suites", "").split()
                    entries += [(u, s) for u in uris for s in suites]
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        with contextlib.suppress(OSError):
            for line in open(path):
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    words = [w for w in words[1:] if not (w.startswith("[") or w.endswith("]") or "=" in w)]
                    if len(words) >= 2:
                        entries.append((words[0], words[1]))
    return entries


def mirrors():
    """(main, security) Debian mirror URIs: $DOCKYARD_DEBIAN_MIRROR or the host's own Debian mirror; (None, None)
    when neither names one (mmdebstrap then uses its own default)."""
    main = os.environ.get(MIRROR_ENV)
    security = None
    if not main:
        for uri, suite in _apt_entries():
            if suite.split("-")[0] not in ("bookworm", "trixie", "bullseye", "stable", "oldstable", "testing", "sid"):
                continue  # not a Debian archive (Ubuntu, third-party repos)
            if "security" in suite or "security" in uri:
                security = security or uri
            else:
                main = main or uri
    if not main:
        return None, None  # no mirror is hard-coded here: mmdebstrap picks its own default
    security = security or main.rstrip("/").rsplit("/", 1)[0] + "/debian-security"
    return main, security


def _apt_options():
    """Host apt options the build must keep (proxy, validity checks of snapshot mirrors)."""
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    keep = ("Acquire::Check-Valid-Until ", "Acquire::Check-Date ", "Acquire::http::Proxy ", "Acquire::https::Proxy ")
    return [line for line in dump.splitlines() if line.startswith(keep)]


def mmdebstrap_command(target, setup_hook, customize_hook):
    main, security = mirrors()
    s = recipe.SUITE
    cmd = [
        tools.find("mmdebstrap") or "mmdebstrap",
        "--mode=root",
        "--format=directory",
        f"--variant={recipe.VARIANT}",
        "--include=" + ",".join(recipe.PACKAGES),
        f'--setup-hook=sh {setup_hook} "$1"',
        f'--customize-hook=sh {customize_hook} "$1"',
    ]
    cmd += ["--dpkgopt=" + o for o in recipe.DPKG_OPTIONS] + ["--aptopt=" + o for o in _apt_options()]
    if not main:
        return cmd + [s, target]
    return cmd + [
        s,
        target,
        f"deb {main} {s} main",
        f"deb {main} {s}-updates main",
        f"deb {security} {s}-security main",
    ]


# -- build ------------------------------------------------------------------------------------------


def _run(cmd, what, log=None, env=None):
    """Run a build step; stream its output lines to log (progress); raise with the tail on failure."""
    tail = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env)
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        tail = (tail + [line])[-30:]
        if log and line.startswith(("I: ", "E: ", "W: ")):
            log(f"  {line}")
    if proc.wait() != 0:
        raise DriverError(f"building the guest image failed at {what} (exit {proc.returncode}):\n" + "\n".join(tail))


def ensure_image(cache_dir, log):
    """The cached guest image for the current recipe, built first if needed (one builder at a time)."""
    image = cached_image(cache_dir)
    if image:
        return image
    final = image_dir(cache_dir)
    root = os.path.dirname(final)
    with open(final + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = cached_image(cache_dir)  # built by another process while we waited
        if image:
            return image
        for stale in glob.glob(final + ".build-*"):  # left by a crashed or interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        work = f"{final}.build-{os.getpid()}"
        try:
            _build(work, log)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    del root
    return cached_image(cache_dir)


def _build(work, log):
    started = time.monotonic()
    os.makedirs(work)
    rootfs = os.path.join(work, "rootfs")
    hooks = {}
    for name, text in (("setup", recipe.setup_hook()), ("customize", recipe.customize_hook())):
        hooks[name] = os.path.join(work, f"{name}.sh")
        with open(hooks[name], "w") as f:
            f.write(text)
    log(
        f"Building the guest image {recipe.IMAGE_NAME} ({recipe.SUITE}, {len(recipe.PACKAGES)} packages "
        f"and their dependencies); this happens once and takes about a minute..."
    )
    env = dict(os.environ, LC_ALL="C.UTF-8")
    _run(mmdebstrap_command(rootfs, hooks["setup"], hooks["customize"]), "mmdebstrap", log, env)
    t_debootstrap = time.monotonic() - started

    log("  Copying out the kernel, initrd and boot loader...")
    kernels = sorted(glob.glob(os.path.join(rootfs, "boot", "vmlinuz-*")))
    initrds = sorted(glob.glob(os.path.join(rootfs, "boot", "initrd.img-*")))
    if not kernels or not initrds:
        raise DriverError("building the guest image failed: no kernel or initrd in the new root's /boot")
    shutil.copyfile(kernels[-1], os.path.join(work, "vmlinuz"))
    shutil.copyfile(initrds[-1], os.path.join(work, "initrd"))
    iso_dir = os.path.join(work, "isolinux")
    os.makedirs(iso_dir)
    for src in ("usr/lib/ISOLINUX/isolinux.bin", "usr/lib/syslinux/modules/bios/ldlinux.c32"):
        shutil.copyfile(os.path.join(rootfs, src), os.path.join(iso_dir, os.path.basename(src)))

    log(f"  Making the {recipe.BASE_SIZE} ext4 disk (qcow2)...")
    raw = os.path.join(work, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(_size_bytes(recipe.BASE_SIZE))
    _run([tools.find("mkfs.ext4") or "mkfs.ext4", "-q", "-F", "-L", recipe.ROOT_LABEL, "-d", rootfs, raw], "mkfs.ext4")
    shutil.rmtree(rootfs)
    _run(
        [tools.find("qemu-img") or "qemu-img", "convert", "-O", "qcow2", raw, os.path.join(work, "disk.qcow2")],
        "qemu-img convert",
    )
    os.unlink(raw)
    for name in ("disk.qcow2", "vmlinuz", "initrd"):
        os.chmod(os.path.join(work, name), 0o444)  # the base of every machine's overlay: never written
    info = {
        "recipe": recipe.recipe_hash(),
        "cmdline": recipe.KERNEL_CMDLINE,
        "suite": recipe.SUITE,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mmdebstrap_seconds": round(t_debootstrap, 1),
        "seconds": round(time.monotonic() - started, 1),
        "mirror": mirrors()[0] or "mmdebstrap's default",
    }
    with open(os.path.join(work, INFO), "w") as f:
        json.dump(info, f, indent=1)
    log(f"Guest image built in {info['seconds']:.0f}s.")


def _size_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = str(text).strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
