"""A container's IPv6 default route comes from a dual-stack network even when its first network is IPv4-only,
as dockerd gives it: `run --network v4only` then `network connect dual`, several networks at run (docker
CLI) and at create (docker-py), create + connect + start; when the network holding the route is disconnected,
the route moves to another dual-stack network the container is on. Also: IPv4 addresses carry their
broadcast address (`brd`), as dockerd sets them.

A real engine in a network namespace made here; the host namespace has an address (fd00:99::1) outside
every container subnet, reached only through the IPv6 default route. Only private addresses, on bridges of
namespaces made here; the root namespace is never touched.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.engine.netns_helper import TempNetns, cleanup_stale
from tests.engine.test_network_isolation import NetnsEngine

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nsenter", "unshare", "docker")),
    reason="needs root, iproute2, nsenter, unshare and the docker CLI",
)
pytest.importorskip("pyroute2")

HOST6 = "fd00:99::1"  # on the engine namespace's lo: beyond every container subnet
NETS = {
    "v4only": ("--subnet", "10.88.0.0/24"),
    "dual": ("--ipv6", "--subnet", "10.89.0.0/24", "--subnet", "fd00:89::/64"),
    "dual2": ("--ipv6", "--subnet", "10.90.0.0/24", "--subnet", "fd00:90::/64"),
}
SLEEP = ("busybox", "sleep", "300")


@pytest.fixture(scope="module")
def eng():
    cleanup_stale()
    host = TempNetns()
    e = None
    try:
        host.sh("ip", "-6", "addr", "add", HOST6 + "/128", "dev", "lo", "nodad")
        e = NetnsEngine(host, ["--opt", "bip=10.87.0.1/24", "--opt", "bridge=dy6rt0"])
        e.start()
        e.load_busybox()
        for name, opts in NETS.items():
            e.docker("network", "create", *opts, name)
        yield e
    finally:
        if e is not None:
            e.cleanup()
        host.delete()


def _routes(eng, name):
    """(IPv4 default route, IPv6 default route) lines of `ip route` in the container ('' if none)."""
    v4 = eng.docker("exec", name, "ip", "-4", "route", "show", "default").stdout.strip()
    v6 = eng.docker("exec", name, "ip", "-6", "route", "show", "default").stdout.strip()
    return v4, v6


def _ping6(eng, name, address=HOST6):
    return eng.docker("exec", name, "ping", "-6", "-c", "1", "-W", "2", address, check=False).returncode == 0


def test_connect_gives_the_first_dual_stack_network_the_v6_default_route(eng):
    eng.docker("run", "-d", "--name", "r1", "--network", "v4only", *SLEEP)
    try:
        v4, v6 = _routes(eng, "r1")
        assert v4.startswith("default via 10.88.0.1 dev eth0") and v6 == ""
        assert not _ping6(eng, "r1")
        eng.docker("network", "connect", "dual", "r1")
        v4, v6 = _routes(eng, "r1")
        assert v4.startswith("default via 10.88.0.1 dev eth0")  # IPv4 keeps its first network's
        assert v6.startswith("default via fd00:89::1 dev eth1")
        assert _ping6(eng, "r1")  # through the route, from its dual-stack address
        eng.docker("network", "connect", "dual2", "r1")
        assert _routes(eng, "r1")[1].startswith("default via fd00:89::1 dev eth1")  # one route, kept
        # the network holding it leaves: another dual-stack network takes over, as in dockerd
        eng.docker("network", "disconnect", "dual", "r1")
        assert _routes(eng, "r1")[1].startswith("default via fd00:90::1 dev eth2")
        assert _ping6(eng, "r1")
        eng.docker("network", "disconnect", "dual2", "r1")
        v4, v6 = _routes(eng, "r1")
        assert v4.startswith("default via 10.88.0.1 dev eth0") and v6 == ""
    finally:
        eng.docker("rm", "-f", "r1")


def test_several_networks_at_run_and_create(eng):
    try:
        # the docker CLI's repeated --network
        eng.docker("run", "-d", "--name", "r2", "--network", "v4only", "--network", "dual", *SLEEP)
        v4, v6 = _routes(eng, "r2")
        assert v4.startswith("default via 10.88.0.1 dev eth0") and v6.startswith("default via fd00:89::1 dev eth1")
        assert _ping6(eng, "r2")
        # docker-py: two endpoints in the create request
        api = eng.client().api
        config = api.create_networking_config({"v4only": api.create_endpoint_config(), "dual2": {}})
        ctr = api.create_container(
            "busybox", ["sleep", "300"], name="r3", host_config=api.create_host_config(network_mode="v4only"),
            networking_config=config,
        )  # fmt: skip
        api.start(ctr["Id"])
        assert _routes(eng, "r3")[1].startswith("default via fd00:90::1 dev eth1")
        assert _ping6(eng, "r3")
        # created, connected while stopped, then started
        eng.docker("create", "--name", "r4", "--network", "v4only", *SLEEP)
        eng.docker("network", "connect", "dual", "r4")
        eng.docker("start", "r4")
        assert _routes(eng, "r4")[1].startswith("default via fd00:89::1 dev eth1")
        # a dual-stack first network keeps both routes on eth0
        eng.docker("run", "-d", "--name", "r5", "--network", "dual", "--network", "dual2", *SLEEP)
        v4, v6 = _routes(eng, "r5")
        assert v4.startswith("default via 10.89.0.1 dev eth0") and v6.startswith("default via fd00:89::1 dev eth0")
    finally:
        eng.docker("rm", "-f", "r2", "r3", "r4", "r5", check=False)


def test_ipv4_addresses_have_their_broadcast_as_dockerd_sets_them(eng):
    """`brd` on the container's eth0 and on the network's bridge, as dockerd 20.10 shows them."""
    eng.docker("run", "-d", "--name", "b1", "--network", "v4only", *SLEEP)
    try:
        addr = eng.docker("exec", "b1", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert "/24 brd 10.88.0.255 " in addr
        device = "br-" + eng.docker("network", "inspect", "-f", "{{.Id}}", "v4only").stdout.strip()[:12]
        bridge = eng.netns.sh("ip", "-4", "-o", "addr", "show", "dev", device).stdout
        assert "inet 10.88.0.1/24 brd 10.88.0.255 " in bridge
    finally:
        eng.docker("rm", "-f", "b1")
