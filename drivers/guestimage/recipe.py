"""The recipe of dockyard's own guest image (Debian bookworm) and its hash, which keys the image cache.

Everything that changes the built image is in here; RECIPE_VERSION is bumped when the build steps
in build.py change in a way the scripts below do not show.
"""

import hashlib
import json

RECIPE_VERSION = "4"
SUITE = "bookworm"
VARIANT = "minbase"
IMAGE_NAME = "dockyard-bookworm"
ROOT_LABEL = "dockyard-root"
# Size of the base disk; each machine's overlay is grown to its own --*-disk-size and the guest
# grows the file system on first boot (cloud-init resizefs).
BASE_SIZE = "2G"
# The user cloud-init creates; provisioning logs in as it and uses sudo, like Docker Machine's "docker".
SSH_USER = "docker"

PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "sudo",
    "iproute2",
    "ca-certificates",
    "openssh-server",
    "python3",
    "cloud-init",
    "e2fsprogs",
    "iptables",
    "systemd-resolved",
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    # isolinux boots the same kernel from a small ISO under hypervisors without direct kernel boot (VirtualBox).
    "isolinux",
    "syslinux-common",
)

DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)

# Modules the initramfs needs to find the root disk under QEMU (virtio) and VirtualBox (AHCI/SATA).
INITRD_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_rng",
    "ext4",
    "crc32c_generic",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
)

KERNEL_CMDLINE = f"root=LABEL={ROOT_LABEL} rw console=ttyS0,115200 net.ifnames=0"

# Runs on the build machine before any package is installed; $1 is the new root.
SETUP_HOOK = r"""set -eu
R="$1"
mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/usr/share/initramfs-tools/modules.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$R/etc/initramfs-tools/conf.d/dockyard.conf"
printf '%s\n' @INITRD_MODULES@ > "$R/usr/share/initramfs-tools/modules.d/dockyard"
"""

# Runs on the build machine after the packages are installed; $1 is the new root.
CUSTOMIZE_HOOK = r"""set -eu
R="$1"

# Host keys are made on first boot (by cloud-init, or by ssh.service itself), unique per machine.
rm -f "$R"/etc/ssh/ssh_host_*
cat > "$R/etc/ssh/sshd_config.d/10-dockyard.conf" <<'EOF2'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF2
mkdir -p "$R/etc/systemd/system/ssh.service.d"
cat > "$R/etc/systemd/system/ssh.service.d/10-dockyard.conf" <<'EOF2'
[Unit]
# Log-ins work once cloud-init has installed the user's key: start sshd after it.
After=cloud-init.service
[Service]
ExecStartPre=/bin/sh -c 'K=/etc/ssh/ssh_host_ed25519_key; test -s $$K || ssh-keygen -q -t ed25519 -N "" -f $$K'
EOF2

# Every clone gets its own machine-id on first boot.
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"

# Units that cost seconds of boot under emulation and do nothing useful in a throw-away VM.
for u in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
         dpkg-db-backup.timer fstrim.timer systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$u"
done

# Network: DHCP on every Ethernet NIC (cloud-init's network-config refines this per machine).
cat > "$R/etc/systemd/network/90-dockyard-dhcp.network" <<'EOF2'
[Match]
Name=e*
[Network]
DHCP=yes
EOF2
chroot "$R" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
ln -sf ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"

cat > "$R/etc/fstab" <<'EOF2'
LABEL=@ROOT_LABEL@ / ext4 defaults,errors=remount-ro 0 1
EOF2
echo dockyard > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 dockyard\n::1 localhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"

# cloud-init: only the NoCloud seed (no probing of cloud metadata services), a locale that exists, and
# only the modules dockyard's seed uses (each of the others costs seconds of Python under emulation).
echo LANG=C.UTF-8 > "$R/etc/default/locale"
cat > "$R/etc/cloud/cloud.cfg.d/90-dockyard.cfg" <<'EOF2'
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
ssh_deletekeys: false
ssh_genkeytypes: [ ed25519 ]
cloud_init_modules: [ seed_random, bootcmd, write_files, growpart, resizefs, mounts, set_hostname,
                      update_hostname, update_etc_hosts, users_groups, ssh ]
cloud_config_modules: [ runcmd ]
cloud_final_modules: [ scripts_per_once, scripts_per_boot, scripts_per_instance, scripts_user, final_message ]
EOF2
"""


def _fill(script):
    return script.replace("@INITRD_MODULES@", " ".join(INITRD_MODULES)).replace("@ROOT_LABEL@", ROOT_LABEL)


def setup_hook():
    return _fill(SETUP_HOOK)


def customize_hook():
    return _fill(CUSTOMIZE_HOOK)


def recipe():
    """Everything that determines the image, as a JSON-able dict."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(PACKAGES),
        "dpkg": list(DPKG_OPTIONS),
        "setup": setup_hook(),
        "customize": customize_hook(),
        "label": ROOT_LABEL,
        "size": BASE_SIZE,
        "cmdline": KERNEL_CMDLINE,
    }


def recipe_hash():
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()
