"""cloud-init NoCloud first-boot data (user, SSH key, hostname, network) and the `cidata` seed ISO carrying it."""

import secrets
import shlex

from dockyard import templates
from dockyard.drivers.guestimage import guestunits, iso, recipe

LABEL = "cidata"  # the volume label NoCloud looks for


def instance_id(machine):
    """A new instance id: cloud-init runs its once-per-instance setup again only when this changes."""
    return f"iid-dockyard-{machine}-{secrets.token_hex(4)}"


def nic(id_, mac, default_route=True):
    return {"id": id_, "mac": mac, "default_route": default_route}


NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"


def fstab_path(path):
    """A path as an fstab field (whitespace and backslashes octal-escaped)."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def ninep_mounts(shares):
    """(bootcmd entries, fstab text) mounting virtio-9p shares [{"Path", "Tag", "ReadOnly"}] at their paths:
    bootcmd mounts them early on first boot (before the SSH user exists, so before provisioning), the fstab
    lines (nofail) on every later boot."""
    cmds, lines = [], []
    for s in shares:
        opts = NINEP_OPTIONS + (",ro" if s.get("ReadOnly") else "")
        path = shlex.quote(s["Path"])
        cmds.append(
            ["sh", "-c", f"mkdir -p {path} && (mountpoint -q {path} || mount -t 9p -o {opts} {s['Tag']} {path})"]
        )
        lines.append(f"{s['Tag']} {fstab_path(s['Path'])} 9p {opts},nofail 0 0\n")
    return cmds, "".join(lines)


# cloud-init's stages after the one that lets SSH in (users, keys): provisioning needs nothing they do.
LATER_STAGES = ("cloud-config.service", "cloud-final.service")


def background_later_stages():
    """bootcmd entries giving cloud-init's later stages the lowest CPU weight and at most a fifth of a CPU (their
    cgroup competes with the SSH session's at the top; systemd applies both when they start)."""
    units = " ".join(LATER_STAGES)
    return [
        ["sh", "-c", f"for u in {units}; do systemctl set-property --runtime $u CPUWeight=1 CPUQuota=20%; done; true"]
    ]


FIRST_BOOT_NAME = "dockyard-file{}"  # first-boot files on the seed ISO, next to user-data


def first_boot_seed_files(files):
    """{name on the seed ISO: bytes} of first-boot files [(guest path, bytes, mode)]."""
    return {FIRST_BOOT_NAME.format(i): data for i, (_, data, _) in enumerate(files)}


def first_boot_install(files, command):
    """bootcmd entry that, once per instance, copies first-boot files from the seed ISO to their paths (root-owned,
    their modes) and then runs command. They travel on the ISO, not in user-data: cloud-init's YAML parser reads
    megabytes for seconds under emulation. A failure leaves provisioning over SSH to install everything."""
    copies = " && ".join(
        f'install -D -o 0 -g 0 -m {mode:04o} "$d/{FIRST_BOOT_NAME.format(i)}" {shlex.quote(path)}'
        for i, (path, _, mode) in enumerate(files)
    )
    script = (
        f'd=$(mktemp -d) && mount -o ro LABEL={LABEL} "$d" && '
        f'{{ {copies}; rc=$?; umount "$d"; rmdir "$d"; [ $rc -eq 0 ]; }} && {{ {command}; }}'
    )
    return ["cloud-init-per", "instance", "dockyard-first-boot", "sh", "-c", script]


def render(
    machine,
    instance,
    ssh_public_key,
    nics,
    user=recipe.SSH_USER,
    mounts=(),
    run_once=True,
    hostname=None,
    shares=(),
    first_boot=None,
):
    """The seed's files {name: bytes}: user-data, meta-data, network-config (and first-boot files).
    mounts: fstab-like lists for cloud-init's mounts module. run_once: later boots skip cloud-init.
    shares: virtio-9p folders [{"Path", "Tag", "ReadOnly"}] mounted at their paths.
    first_boot: (files [(guest path, bytes, mode)], shell command) installed and run early on the first boot."""
    bootcmd, fstab = ninep_mounts(shares)
    ctx = dict(
        machine=machine,
        hostname=hostname or machine,
        instance_id=instance,
        user=user,
        ssh_public_key=ssh_public_key.strip(),
        nics=list(nics),
        mounts=[list(m) for m in mounts],
        run_once=run_once,
        bootcmd=bootcmd,
        background=background_later_stages(),
        fstab=fstab,
        first_boot=[first_boot_install(*first_boot)] if first_boot else [],
        guest_files=guestunits.files(),
        guest_enable=list(guestunits.ENABLED),
        guest_start=list(guestunits.STARTED),
    )
    return {
        "user-data": templates.render("cloud-init-user-data.j2", **ctx).encode(),
        "meta-data": templates.render("cloud-init-meta-data.j2", **ctx).encode(),
        "network-config": templates.render("cloud-init-network-config.j2", **ctx).encode(),
        **(first_boot_seed_files(first_boot[0]) if first_boot else {}),
    }


def write_seed(path, files):
    iso.write_iso(path, files, LABEL)


def write_boot_iso(path, image, cmdline):
    """A CD that boots image's kernel and initrd with isolinux (for hypervisors without direct kernel boot)."""

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    cfg = (
        f"DEFAULT dockyard\nPROMPT 0\nTIMEOUT 1\nLABEL dockyard\n  KERNEL /vmlinuz\n  APPEND initrd=/initrd {cmdline}\n"
    )
    files = {
        "isolinux.bin": read(f"{image.isolinux}/isolinux.bin"),
        "ldlinux.c32": read(f"{image.isolinux}/ldlinux.c32"),
        "isolinux.cfg": cfg.encode(),
        "vmlinuz": read(image.kernel),
        "initrd": read(image.initrd),
    }
    iso.write_iso(path, files, "DOCKYARD_BOOT", boot="isolinux.bin")
