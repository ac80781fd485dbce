"""End to end on a test host whose engine data-root cannot hold overlayfs upper dirs (it sits on the host's own
overlay root, as in containers and some CI runners): `dockyard create` lets the engine fall back to the vfs storage
driver and shows its warning (from /info) on stderr, one line each, also with --quiet."""

import json

import pytest

from tests.hosts.netns_host import ENGINE_DATA_ROOT
from tests.integration.test_generic import create_generic

pytestmark = pytest.mark.integration


def test_create_shows_the_engines_vfs_fallback_warning(dockyard, make_host):
    host = make_host()
    # The test host binds a directory of the real disk over the engine's data-root; without it the data-root is
    # on the host's overlay root, where overlayfs cannot put its upper dirs.
    assert host.exec(f"umount {ENGINE_DATA_ROOT}").returncode == 0
    p = create_generic(dockyard, host, "v1", "-q")
    assert p.stdout.strip().endswith("run: dockyard env v1") and len(p.stdout.splitlines()) == 1
    vfs = [line for line in p.stderr.splitlines() if "vfs storage driver" in line]
    assert len(vfs) == 1 and vfs[0].startswith(f"WARNING: overlayfs does not work in data-root {ENGINE_DATA_ROOT}")
    assert all(line.startswith("WARNING: ") for line in p.stderr.splitlines()), p.stderr  # one line each
    info = json.loads(dockyard.docker("v1", "info", "--format", "{{json .}}").stdout)
    assert info["Driver"] == "vfs"


def test_create_on_a_host_that_holds_overlayfs_shows_no_storage_warning(dockyard, make_host):
    host = make_host()
    p = create_generic(dockyard, host, "o1")
    assert "Docker is up and running!" in p.stdout
    assert "vfs" not in p.stderr and "overlayfs" not in p.stderr, p.stderr
    info = json.loads(dockyard.docker("o1", "info", "--format", "{{json .}}").stdout)
    assert info["Driver"] == "overlay2"
