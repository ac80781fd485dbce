"""Laptop folders in a VirtualBox machine: the same choice as qemu's (drivers/qemu/shares.py: the home directory by
default, `--share PATH[:ro]` repeatable, `--no-share`), shared as VirtualBox shared folders and mounted in the
guest at the same paths with the mainline kernel's vboxsf (no Guest Additions needed), so `docker run -v
$PWD:/app` sees the laptop's files.

The guest side is one shell script run over SSH after every boot (before provisioning): it mounts what is not
mounted yet and keeps /etc/fstab's vboxsf lines for dockyard's shares equal to the machine's (nofail, so a
boot never waits for them)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from dockyard.drivers.base import Flag
from dockyard.drivers.guestimage.seed import fstab_path
from dockyard.drivers.qemu import settings as qemu_settings
from dockyard.drivers.qemu import shares
from dockyard.provisioner.core.errors import DriverError

# --share and --no-share mean what they mean for qemu.
FLAGS: list[Flag] = [f for f in qemu_settings.FLAGS if f.name in ("share", "no-share")]
TAG_PATTERN = "^share[0-9]+$"  # the share names dockyard gives (shares.parse: share0, share1, ...)


def from_flags(values: Mapping[str, Any], ssh_user: str) -> list[dict] | None:
    """The shares the flags ask for, or None when they leave it to create time (the home directory).
    --virtualbox-no-share (Docker Machine's flag) counts as --no-share."""
    no_share = bool(values.get("no_share") or values.get("virtualbox_no_share"))
    wanted = list(values.get("share") or ())
    if no_share and wanted:
        raise DriverError("--share and --no-share contradict each other")
    if no_share or wanted:
        return shares.parse(wanted, ssh_user)
    return None


def mount_options(share: Mapping[str, Any], uid: int, gid: int) -> str:
    """vboxsf options: files show as the laptop user's (as 9p's do for qemu); read-only shares mount ro."""
    return f"uid={uid},gid={gid}" + (",ro" if share.get("ReadOnly") else "")


def guest_script(share_list: list[dict], uid: int | None = None, gid: int | None = None, fstab: str = "/etc/fstab"):
    """The root shell script that mounts the shares in the guest and records them in fstab. It mounts every share
    it can, says on stderr which it cannot, and exits 1 if any failed."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    q = shlex.quote
    lines = ["failed=0"]
    entries = []
    for s in share_list:
        path, opts = q(s["Path"]), mount_options(s, uid, gid)
        lines.append(
            f"mkdir -p {path} && {{ mountpoint -q {path} || mount -t vboxsf -o {opts} {q(s['Tag'])} {path}; }} "
            f"|| {{ echo {q('cannot mount ' + s['Path'])} >&2; failed=1; }}"
        )
        entries.append(f"{s['Tag']} {fstab_path(s['Path'])} vboxsf {opts},nofail 0 0")
    # fstab: drop the lines of dockyard's shares, then add the current ones (the rest of the file is kept as is).
    keep = f"awk '!($3 == \"vboxsf\" && $1 ~ /{TAG_PATTERN}/)' {q(fstab)}"
    add = "".join(f"; printf '%s\\n' {q(e)}" for e in entries)
    lines.append(f"{{ {keep}{add}; }} > {q(fstab + '.dockyard')} && mv {q(fstab + '.dockyard')} {q(fstab)}")
    lines.append('exit "$failed"')
    return "\n".join(lines) + "\n"
