"""Shared fixtures for real test hosts: the cached Debian rootfs and a factory of started hosts."""

import os
import shutil

import pytest

from tests.hosts import netns_host
from tests.hosts import rootfs as rootfs_build

_HOST_TOOLS = ("mmdebstrap", "nsenter", "unshare", "ip", "mount")


@pytest.fixture(scope="session")
def rootfs(request):
    """Path of the cached bookworm rootfs (built on first use); removes leftovers of crashed runs."""
    if os.geteuid() != 0:
        pytest.skip("test hosts need root (network namespaces, overlay mounts)")
    missing = [tool for tool in _HOST_TOOLS if not shutil.which(tool)]
    if missing:
        pytest.skip(f"test hosts need {', '.join(missing)}: run .ci/hosts-deps.sh")
    plugins = request.config.pluginmanager
    reporter, capman = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")

    def log(msg: str) -> None:  # shown even under output capturing (e.g. the build time)
        if reporter and capman:
            with capman.global_and_fixture_disabled():
                reporter.write_line(msg)

    for item in netns_host.cleanup_stale():
        log(f"removed stale test-host leftover: {item}")
    return rootfs_build.ensure_rootfs(log=log)


@pytest.fixture
def make_host(rootfs):
    """make_host(systemd=False, name=None) -> started TestHost; all are torn down afterwards."""
    hosts = []

    def _make(systemd: bool = False, name: str | None = None) -> netns_host.TestHost:
        if systemd and not shutil.which("systemd-nspawn"):
            pytest.skip("systemd hosts need systemd-nspawn: run .ci/hosts-deps.sh")
        host = netns_host.TestHost(rootfs, name=name, systemd=systemd)
        hosts.append(host)
        return host.start()

    yield _make
    errors = []
    for host in reversed(hosts):
        try:
            host.teardown()
        except Exception as e:  # tear down the others anyway
            errors.append(f"{host.name}: {e!r}")
    if errors:
        pytest.fail("test host teardown failed: " + "; ".join(errors))
