"""A container's default routes, IPv4 and IPv6, go through one of its networks as dockerd 20.10 picks it
(measured on Debian's dockerd): non-internal before internal, dual-stack before IPv4-only, then by name;
a connect or disconnect that changes that network moves both routes (`run --network v4only` then `network
connect dual` moves them to dual; disconnecting the network that holds them hands them on), also with
several networks at run (docker CLI) and at create (docker-py), and create + connect + start. Also: IPv4
addresses carry their broadcast address (`brd`), as dockerd sets them.

A real engine in a network namespace made here; the host namespace has addresses (10.86.99.1, fd00:99::1)
outside every container subnet, reached only through the default routes. Only private addresses, on
bridges of namespaces made here; the root namespace is never touched.
"""

from __future__ import annotations

import json
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
HOST4 = "10.86.99.1"  # likewise
NETS = {
    "alpha": ("--subnet", "10.91.0.0/24"),
    "ainternal": ("--internal", "--subnet", "10.92.0.0/24"),
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
        host.sh("ip", "addr", "add", HOST4 + "/32", "dev", "lo")
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


def _ping4(eng, name, address=HOST4):
    return eng.docker("exec", name, "ping", "-c", "1", "-W", "2", address, check=False).returncode == 0


def test_disconnecting_the_ipv4_route_network_hands_the_route_on(eng):
    """run on alpha, connect v4only, disconnect alpha: v4only takes the default route (dockerd does)."""
    d = eng.docker
    d("run", "-d", "--name", "m1", "--network", "alpha", *SLEEP)
    try:
        assert _routes(eng, "m1")[0].startswith("default via 10.91.0.1 dev eth0") and _ping4(eng, "m1")
        d("network", "connect", "v4only", "m1")
        assert _routes(eng, "m1")[0].startswith("default via 10.91.0.1 dev eth0")  # alpha sorts first: kept
        d("network", "disconnect", "alpha", "m1")
        v4, v6 = _routes(eng, "m1")
        assert v4.startswith("default via 10.88.0.1 dev eth1") and v6 == ""
        assert _ping4(eng, "m1")  # through the route
        nets = json.loads(d("inspect", "-f", "{{json .NetworkSettings.Networks}}", "m1").stdout)
        assert list(nets) == ["v4only"]
        assert nets["v4only"]["Gateway"] == "10.88.0.1" and nets["v4only"]["IPAddress"].startswith("10.88.0.")
        # connected again, alpha takes the routes back; an internal network comes after the others
        d("network", "connect", "alpha", "m1")
        d("network", "connect", "ainternal", "m1")
        assert _routes(eng, "m1")[0].startswith("default via 10.91.0.1 dev eth0")
        d("network", "disconnect", "alpha", "m1")
        assert _routes(eng, "m1")[0].startswith("default via 10.88.0.1 dev eth1")
        # only the internal network left: its gateway gets the route, as in dockerd
        d("network", "disconnect", "v4only", "m1")
        assert _routes(eng, "m1")[0].startswith("default via 10.92.0.1 dev eth")
    finally:
        d("rm", "-f", "m1")


def test_connect_of_a_dual_stack_network_takes_both_default_routes(eng):
    eng.docker("run", "-d", "--name", "r1", "--network", "v4only", *SLEEP)
    try:
        v4, v6 = _routes(eng, "r1")
        assert v4.startswith("default via 10.88.0.1 dev eth0") and v6 == ""
        assert not _ping6(eng, "r1")
        eng.docker("network", "connect", "dual", "r1")
        v4, v6 = _routes(eng, "r1")
        assert v4.startswith("default via 10.89.0.1 dev eth1")  # dual-stack first: IPv4 moves too
        assert v6.startswith("default via fd00:89::1 dev eth1")
        assert _ping6(eng, "r1") and _ping4(eng, "r1")  # through the routes
        eng.docker("network", "connect", "dual2", "r1")
        assert _routes(eng, "r1")[1].startswith("default via fd00:89::1 dev eth1")  # one route, kept
        # the network holding them leaves: another dual-stack network takes over, as in dockerd
        eng.docker("network", "disconnect", "dual", "r1")
        v4, v6 = _routes(eng, "r1")
        assert v4.startswith("default via 10.90.0.1 dev eth2") and v6.startswith("default via fd00:90::1 dev eth2")
        assert _ping6(eng, "r1") and _ping4(eng, "r1")
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
        assert v4.startswith("default via 10.89.0.1 dev eth1") and v6.startswith("default via fd00:89::1 dev eth1")
        assert _ping6(eng, "r2")
        # docker-py: two endpoints in the create request
        api = eng.client().api
        config = api.create_networking_config({"v4only": api.create_endpoint_config(), "dual2": {}})
        ctr = api.create_container(
            "busybox", ["sleep", "300"], name="r3", host_config=api.create_host_config(network_mode="v4only"),
            networking_config=config,
        )  # fmt: skip
        api.start(ctr["Id"])
        v4, v6 = _routes(eng, "r3")
        assert v4.startswith("default via 10.90.0.1 dev eth1") and v6.startswith("default via fd00:90::1 dev eth1")
        assert _ping6(eng, "r3")
        # created, connected while stopped, then started
        eng.docker("create", "--name", "r4", "--network", "v4only", *SLEEP)
        eng.docker("network", "connect", "dual", "r4")
        eng.docker("start", "r4")
        v4, v6 = _routes(eng, "r4")
        assert v4.startswith("default via 10.89.0.1 dev eth1") and v6.startswith("default via fd00:89::1 dev eth1")
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
