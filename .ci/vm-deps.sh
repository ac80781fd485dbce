#!/bin/sh
# Installs the Debian packages the qemu/virtualbox drivers and their tests need: QEMU (TCG works without
# KVM), qemu-img, mmdebstrap and e2fsprogs to build the guest image, genisoimage for isoinfo (an independent
# check of the cloud-init seed ISO). With --build it also pre-builds the cached guest image
# ($DOCKYARD_IMAGE_CACHE or /var/cache/dockyard-tests/images) so its build time shows here, not in a test.
set -eu

pkgs="qemu-system-x86 qemu-utils mmdebstrap debian-archive-keyring e2fsprogs genisoimage syslinux syslinux-common mtools dosfstools"
sh "$(dirname "$0")/apt-missing.sh" $pkgs  # shellcheck disable=SC2086

if [ "${1:-}" = "--build" ]; then
    cd "$(dirname "$0")/.."
    export DOCKYARD_IMAGE_CACHE="${DOCKYARD_IMAGE_CACHE:-/var/cache/dockyard-tests/images}"
    python3 -c 'import os; from dockyard.drivers.guestimage import build; build.ensure_image(os.path.dirname(os.environ["DOCKYARD_IMAGE_CACHE"]), print)'
fi
