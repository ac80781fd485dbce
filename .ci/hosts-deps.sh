#!/bin/sh
# Installs the Debian packages that the test hosts in tests/hosts/ need (netns + sshd hosts and
# systemd-nspawn hosts built from an mmdebstrap rootfs). With --build it also pre-builds the
# cached rootfs variants ($DOCKYARD_TEST_CACHE or /var/cache/dockyard-tests) so its build time shows up
# here instead of inside the first test. Needs root.
set -eu

pkgs="mmdebstrap debian-archive-keyring systemd-container iproute2 openssh-client procps util-linux mount"
sh "$(dirname "$0")/apt-missing.sh" $pkgs  # shellcheck disable=SC2086

if [ "${1:-}" = "--build" ]; then
    cd "$(dirname "$0")/.."
    python3 -m tests.hosts.rootfs
    # The "docker" variant (base + Debian's docker.io) for tests/integration/test_engine_docker.py.
    python3 -m tests.hosts.rootfs docker
fi
