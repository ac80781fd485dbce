"""cloud-init NoCloud first-boot data (user, SSH key, hostname, network) and the `cidata` seed ISO carrying it."""

import secrets

from dockyard import templates
from dockyard.drivers.guestimage import iso, recipe

LABEL = "cidata"  # the volume label NoCloud looks for


def instance_id(machine):
    """A new instance id: cloud-init runs its once-per-instance setup again only when this changes."""
    return f"iid-dockyard-{machine}-{secrets.token_hex(4)}"


def nic(id_, mac, default_route=True):
    return {"id": id_, "mac": mac, "default_route": default_route}


def render(machine, instance, ssh_public_key, nics, user=recipe.SSH_USER, mounts=(), run_once=True, hostname=None):
    """The seed's files {name: bytes}: user-data, meta-data, network-config.
    mounts: fstab-like lists for cloud-init's mounts module. run_once: later boots skip cloud-init."""
    ctx = dict(
        machine=machine,
        hostname=hostname or machine,
        instance_id=instance,
        user=user,
        ssh_public_key=ssh_public_key.strip(),
        nics=list(nics),
        mounts=[list(m) for m in mounts],
        run_once=run_once,
    )
    return {
        "user-data": templates.render("cloud-init-user-data.j2", **ctx).encode(),
        "meta-data": templates.render("cloud-init-meta-data.j2", **ctx).encode(),
        "network-config": templates.render("cloud-init-network-config.j2", **ctx).encode(),
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
