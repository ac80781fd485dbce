"""Build (once) and cache the Debian bookworm rootfs that every test host boots from.

Two variants share one recipe: "base" (every test host) and "docker" (base plus Debian's docker.io, for
`dockyard create --engine docker`; test hosts have no route out, so dockerd must already be in the image).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE_VERSION = "1"
SUITE = "bookworm"
PACKAGES = (
    "openssh-server",
    "python3",
    "iproute2",
    "procps",
    "sudo",
    "ca-certificates",
    "systemd-sysv",
    "dbus",
    # The engine writes its NAT rules over netlink itself; `nft` lets tests (and people) read them.
    "nftables",
)
# Added on top of PACKAGES by the "docker" variant: Debian's Docker Engine and what it needs at run time.
VARIANTS: dict[str, tuple[str, ...]] = {
    "base": (),
    "docker": ("docker.io", "iptables", "ca-certificates"),
}
# Docs, man pages and translations are never read by a test host; dropping them saves space and time.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
# Password of `pwuser`; only there so that `sudo -n` has to refuse.
PWUSER_PASSWORD = "dockyard-pw"

# Runs on the build machine as an mmdebstrap customize hook; $1 is the new root.
SETUP_SCRIPT = r"""#!/bin/sh
set -eu
R="$1"

# Every test host writes its own ed25519 host key; none may be shared through the image.
rm -f "$R"/etc/ssh/ssh_host_*
cat > "$R/etc/ssh/sshd_config.d/10-dockyard-test.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

# An empty machine-id makes every boot (and every nspawn host) get its own id.
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"

# Units that only slow down or disturb a short-lived container boot.
for u in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
         dpkg-db-backup.timer fstrim.timer console-getty.service getty@.service \
         systemd-timesyncd.service systemd-networkd-wait-online.service \
         container-getty@.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$u"
done

# tester: key login, passwordless sudo.  pwuser: key login, sudo wants a password.
chroot "$R" useradd --create-home --shell /bin/bash tester
chroot "$R" useradd --create-home --shell /bin/bash pwuser
# '*' = no usable password but not "locked", so sshd key logins are allowed.
chroot "$R" usermod -p '*' tester
echo "pwuser:@PWUSER_PASSWORD@" | chroot "$R" chpasswd
echo 'tester ALL=(ALL) NOPASSWD:ALL' > "$R/etc/sudoers.d/tester"
echo 'pwuser ALL=(ALL) ALL' > "$R/etc/sudoers.d/pwuser"
chmod 0440 "$R/etc/sudoers.d/tester" "$R/etc/sudoers.d/pwuser"
for u in root tester pwuser; do
    h=$(chroot "$R" sh -c "getent passwd $u | cut -d: -f6")
    install -d -m 0700 "$R$h/.ssh"
    chroot "$R" chown "$u:$u" "$h/.ssh"
done
""".replace("@PWUSER_PASSWORD@", PWUSER_PASSWORD)


def cache_dir() -> Path:
    return Path(os.environ.get("DOCKYARD_TEST_CACHE") or "/var/cache/dockyard-tests")


def packages(variant: str = "base") -> tuple[str, ...]:
    return PACKAGES + tuple(p for p in VARIANTS[variant] if p not in PACKAGES)


def recipe_key(variant: str = "base") -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "packages": sorted(PACKAGES),
        "dpkg": list(DPKG_OPTIONS),
        "setup": SETUP_SCRIPT,
    }
    if variant != "base":  # the base variant keeps the key (and so the cache) it always had
        recipe["variant-name"] = variant
        recipe["packages"] = sorted(packages(variant))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _parse_deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, None
        elif line[0] in " \t" and last:
            cur[last] += " " + line.strip()
        elif ":" in line:
            last, value = line.split(":", 1)
            last = last.strip().lower()
            cur[last] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


_DEBIAN_SUITES = ("bookworm", "trixie", "bullseye", "stable", "oldstable", "testing", "sid")


def host_debian_uris() -> tuple[str, str] | None:
    """(main URI, security URI) of the Debian mirror the host's apt uses, or None (then mmdebstrap picks)."""
    main = security = None
    entries: list[tuple[str, str]] = []  # (uri, suite)
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for st in _parse_deb822(Path(path).read_text()):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes") == "no":
                continue
            for uri in st.get("uris", "").split():
                for suite in st.get("suites", "").split():
                    entries.append((uri, suite))
    list_files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in list_files:
        if not os.path.exists(path):
            continue
        for line in Path(path).read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 3 or words[0] != "deb":
                continue
            words = words[1:]
            if words[0].startswith("["):  # skip "[opt=val ...]"
                while words and not words[0].endswith("]"):
                    words.pop(0)
                words.pop(0)
            if len(words) >= 2:
                entries.append((words[0], words[1]))
    for uri, suite in entries:
        # Only Debian's own archives qualify; third-party repos have other suite names.
        if suite.split("-")[0] not in _DEBIAN_SUITES:
            continue
        if suite.endswith("-security") or "security" in uri:
            security = security or uri
        else:
            main = main or uri
    if main is None:
        return None
    security = security or main.rstrip("/").rsplit("/", 1)[0] + "/debian-security"
    return main, security


def mirror_lines(suite: str, updates: bool = True) -> list[str]:
    """mmdebstrap's mirror arguments: the host's Debian mirror if apt has one, else none (its own default)."""
    uris = host_debian_uris()
    if uris is None:
        return []
    main, security = uris
    lines = [f"deb {main} {suite} main"]
    if updates:
        lines.append(f"deb {main} {suite}-updates main")
    return lines + [f"deb {security} {suite}-security main"]


def host_apt_options() -> list[str]:
    """apt options of the host that must also apply to the build (validity checks, proxy)."""
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    keep = ("Acquire::Check-Valid-Until ", "Acquire::Check-Date ", "Acquire::http::Proxy ", "Acquire::https::Proxy ")
    return [line for line in dump.splitlines() if line.startswith(keep)]


def mmdebstrap_command(target: Path, hook: Path, variant: str = "base") -> list[str]:
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(packages(variant)),
        "--customize-hook=sh " + str(hook) + ' "$1"',
    ]
    cmd += ["--dpkgopt=" + opt for opt in DPKG_OPTIONS]
    cmd += ["--aptopt=" + opt for opt in host_apt_options()]
    return cmd + [SUITE, str(target), *mirror_lines(SUITE)]


def ensure_rootfs(log=None, variant: str = "base") -> Path:
    """Return the cached rootfs directory of `variant` (see VARIANTS), building it first if needed.

    A file lock makes concurrent pytest processes wait for one build instead of racing.
    `log(msg)` receives a line with the build time when a build happened.
    """
    if os.geteuid() != 0:
        raise PermissionError("building the test rootfs needs root")
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    if variant not in VARIANTS:
        raise ValueError(f"unknown rootfs variant {variant!r}; known: {', '.join(VARIANTS)}")
    key = recipe_key(variant)[:24]
    final = base / f"rootfs-{key}"
    if (final / ".dockyard-build.json").exists():
        return final
    with open(base / f"rootfs-{key}.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if (final / ".dockyard-build.json").exists():  # another process built it meanwhile
            return final
        for stale in base.glob(f".build-{key}-*"):  # left by a crashed build
            shutil.rmtree(stale, ignore_errors=True)
        work = base / f".build-{key}-{os.getpid()}"
        work.mkdir()
        hook = work / "setup.sh"
        hook.write_text(SETUP_SCRIPT)
        target = work / "root"
        cmd = mmdebstrap_command(target, hook, variant)
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        info = {
            "key": recipe_key(variant),
            "variant": variant,
            "seconds": round(seconds, 1),
            "command": cmd,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (target / ".dockyard-build.json").write_text(json.dumps(info, indent=1))
        os.rename(target, final)  # atomic: readers see either nothing or a complete tree
        shutil.rmtree(work, ignore_errors=True)
    msg = f"dockyard test rootfs ({variant}) built in {seconds:.1f} s -> {final}"
    (log or (lambda m: print(m, file=sys.stderr)))(msg)
    return final


if __name__ == "__main__":  # pre-build from CI: python3 -m tests.hosts.rootfs [VARIANT...]
    for name in sys.argv[1:] or ["base"]:
        print(ensure_rootfs(log=print, variant=name))
