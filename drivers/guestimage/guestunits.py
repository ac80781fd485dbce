"""The systemd units dockyard keeps in a local machine's guest: the root file system grows to the disk on every
boot (`dockyard set --disk`), and the system clock is stepped to the RTC after the laptop sleeps.

The seed writes them on first boot (cloud-init write_files); `install_script()` puts them into a machine made by
an older dockyard (driver start, over SSH). `DIGEST` names this set: a machine records it and is brought up to
date when it differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex

from dockyard import templates

GROWROOT_PATH = "/usr/local/sbin/dockyard-growroot"
CLOCKSYNC_PATH = "/usr/local/sbin/dockyard-clocksync"
UNIT_DIR = "/etc/systemd/system"
GROWROOT_UNIT = "dockyard-growroot.service"
CLOCKSYNC_UNIT = "dockyard-clocksync.service"
CLOCKSYNC_TIMER = "dockyard-clocksync.timer"
# How far the system clock may be off the RTC before it is stepped, and how often that is checked: after the
# laptop wakes, the guest's clock is right again within one period.
CLOCK_MAX_SKEW = 2
CLOCK_PERIOD = 30
MARKER = "dockyard guest unit"


@dataclasses.dataclass(frozen=True)
class GuestFile:
    path: str
    content: str
    mode: int


def files() -> list[GuestFile]:
    """The scripts and units, rendered."""
    ctx = dict(
        marker=MARKER,
        growroot_path=GROWROOT_PATH,
        clocksync_path=CLOCKSYNC_PATH,
        max_skew=CLOCK_MAX_SKEW,
        period=CLOCK_PERIOD,
    )
    return [
        GuestFile(GROWROOT_PATH, templates.render("guest-growroot.sh.j2", **ctx), 0o755),
        GuestFile(f"{UNIT_DIR}/{GROWROOT_UNIT}", templates.render("guest-growroot.service.j2", **ctx), 0o644),
        GuestFile(CLOCKSYNC_PATH, templates.render("guest-clocksync.sh.j2", **ctx), 0o755),
        GuestFile(f"{UNIT_DIR}/{CLOCKSYNC_UNIT}", templates.render("guest-clocksync.service.j2", **ctx), 0o644),
        GuestFile(f"{UNIT_DIR}/{CLOCKSYNC_TIMER}", templates.render("guest-clocksync.timer.j2", **ctx), 0o644),
    ]


# Enabled on first boot; the timer also starts at once (growroot's work is done by cloud-init on first boot).
ENABLED = (GROWROOT_UNIT, CLOCKSYNC_TIMER)
STARTED = (CLOCKSYNC_TIMER,)


def digest() -> str:
    """A short hash of the rendered set (changes whenever a file does)."""
    h = hashlib.sha256()
    for f in files():
        h.update(f"{f.path}\0{f.mode:o}\0{f.content}\0".encode())
    return h.hexdigest()[:16]


def install_script() -> str:
    """Shell (run as root in the guest) that writes every file that is missing or different, enables the units,
    starts the timer, and runs growroot once when it was missing or changed: a disk grown by `dockyard set --disk`
    before this start then grows at once instead of on the next boot. Prints "installed PATH" per file written."""
    lines = ["set -eu", "changed="]
    for f in files():
        q = shlex.quote(f.path)
        new = shlex.quote(f.path + ".dockyard-new")
        lines.append(
            f"if ! printf '%s' {shlex.quote(f.content)} | cmp -s - {q}; then "
            f"mkdir -p {shlex.quote(f.path.rsplit('/', 1)[0])} && printf '%s' {shlex.quote(f.content)} > {new} && "
            f'chmod {f.mode:o} {new} && mv -f {new} {q} && changed="$changed {q}" && echo installed {q}; fi'
        )
    units = " ".join(f.path.rsplit("/", 1)[1] for f in files() if f.path.startswith(UNIT_DIR + "/"))
    lines += [
        # daemon-reload (seconds under emulation) only when systemd holds an older copy of a unit or never found it
        f'for u in {units}; do case "$(systemctl show -p LoadState -p NeedDaemonReload "$u")" in '
        "*LoadState=loaded*NeedDaemonReload=no*|*NeedDaemonReload=no*LoadState=loaded*) ;; "
        "*) systemctl daemon-reload; break;; esac; done",
        f"systemctl enable --quiet --no-reload {' '.join(ENABLED)}",
        f"systemctl start --no-block {' '.join(STARTED)}",
        f'case "$changed" in *{GROWROOT_PATH}*|*{GROWROOT_UNIT}*) systemctl start {GROWROOT_UNIT};; esac',
    ]
    return "\n".join(lines) + "\n"
