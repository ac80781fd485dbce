"""IPAM of the bridge network: allocation order, release, persistence, exhaustion, reconfiguration."""

import ipaddress
import json

import pytest

from dockyard.engine.network.ipam import Ipam, IpamError, PoolExhausted


def test_sequential_allocation_skips_gateway_and_is_idempotent(tmp_path):
    ipam = Ipam(str(tmp_path / "ipam.json"), "172.18.0.0/16", "172.18.0.1")
    a = ipam.allocate("a")
    b = ipam.allocate("b")
    assert (str(a), str(b)) == ("172.18.0.2", "172.18.0.3")
    assert ipam.allocate("a") == a  # one address per owner
    assert ipam.owner_of("172.18.0.3") == "b"
    assert ipam.address_of("b") == b
    assert ipam.prefixlen == 16


def test_gateway_in_the_middle_is_never_handed_out(tmp_path):
    ipam = Ipam(str(tmp_path / "ipam.json"), "10.99.0.0/29", "10.99.0.3")
    got = [str(ipam.allocate("c%d" % i)) for i in range(5)]
    assert got == ["10.99.0.1", "10.99.0.2", "10.99.0.4", "10.99.0.5", "10.99.0.6"]
    assert ipam.capacity() == 5


def test_a_released_address_is_handed_out_again_at_once_lowest_first(tmp_path):
    """As dockerd 20.10 (measured): the next container gets the lowest free address."""
    ipam = Ipam(str(tmp_path / "ipam.json"), "10.99.0.0/29", "10.99.0.1")  # .2 - .6 usable
    for i in range(3):
        ipam.allocate("c%d" % i)  # .2 .3 .4
    assert str(ipam.release("c1")) == "10.99.0.3"
    assert ipam.release("c1") is None
    assert str(ipam.allocate("d")) == "10.99.0.3"  # the freed one, at once
    ipam.release("c0")
    ipam.release("c2")
    assert [str(ipam.allocate(o)) for o in ("e", "f", "g")] == ["10.99.0.2", "10.99.0.4", "10.99.0.5"]


def test_range_and_reserved_addresses(tmp_path):
    ipam = Ipam(str(tmp_path / "ipam.json"), "10.99.0.0/24", "10.99.0.128", "10.99.0.128/29", ["10.99.0.129"])
    assert [str(ipam.allocate(o)) for o in ("a", "b")] == ["10.99.0.130", "10.99.0.131"]
    ipam.release("a")
    assert str(ipam.allocate("c")) == "10.99.0.130"
    six = Ipam(str(tmp_path / "ipam6.json"), "fd00:86::/64", "fd00:86::100", "fd00:86::100/120")
    assert str(six.allocate("a")) == "fd00:86::101"


def test_exhaustion(tmp_path):
    ipam = Ipam(str(tmp_path / "ipam.json"), "10.99.0.0/30", "10.99.0.1")  # only .2 left
    assert str(ipam.allocate("one")) == "10.99.0.2"
    with pytest.raises(PoolExhausted, match="no available IPv4 addresses"):
        ipam.allocate("two")
    ipam.release("one")
    assert str(ipam.allocate("two")) == "10.99.0.2"


def test_persistence_across_instances(tmp_path):
    path = str(tmp_path / "ipam.json")
    first = Ipam(path, "172.18.0.0/16", "172.18.0.1")
    first.allocate("a")
    first.allocate("b")
    first.release("a")
    second = Ipam(path, "172.18.0.0/16", "172.18.0.1")
    assert second.allocations() == {"172.18.0.3": "b"}
    assert str(second.allocate("c")) == "172.18.0.2"  # the lowest free one
    on_disk = json.loads((tmp_path / "ipam.json").read_text())
    assert on_disk["allocations"] == {"172.18.0.2": "c", "172.18.0.3": "b"}
    assert on_disk["subnet"] == "172.18.0.0/16"


def test_changed_subnet_drops_old_leases(tmp_path):
    path = str(tmp_path / "ipam.json")
    Ipam(path, "172.18.0.0/16", "172.18.0.1").allocate("a")
    moved = Ipam(path, "172.19.0.0/16", "172.19.0.1")
    assert moved.allocations() == {}
    assert str(moved.allocate("a")) == "172.19.0.2"


def test_preferred_address(tmp_path):
    ipam = Ipam(str(tmp_path / "ipam.json"), "172.18.0.0/16", "172.18.0.1")
    assert str(ipam.allocate("a", preferred="172.18.5.5")) == "172.18.5.5"
    with pytest.raises(IpamError, match="already in use"):
        ipam.allocate("b", preferred="172.18.5.5")
    for bad in ("172.18.0.1", "172.18.255.255", "10.0.0.2", "nonsense"):
        with pytest.raises(IpamError):
            ipam.allocate("b", preferred=bad)


def test_bad_configuration(tmp_path):
    with pytest.raises(IpamError, match="not in"):
        Ipam(str(tmp_path / "x.json"), "172.18.0.0/16", "10.0.0.1")
    with pytest.raises(IpamError, match="too small"):
        Ipam(str(tmp_path / "x.json"), "172.18.0.0/31", "172.18.0.1")


def test_corrupt_state_file_is_ignored(tmp_path):
    path = tmp_path / "ipam.json"
    path.write_text("{not json")
    ipam = Ipam(str(path), "172.18.0.0/16", "172.18.0.1")
    assert ipam.allocations() == {}
    assert ipaddress.IPv4Address(ipam.allocate("a")) in ipaddress.IPv4Network("172.18.0.0/16")
