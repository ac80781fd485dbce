"""Published-port specs as the API carries them, host-port reservation, and the Ports shapes."""

import socket

import pytest

from dockyard.engine.network.ports import (
    PortAllocationError,
    PortAllocator,
    PortRequest,
    PortSpecError,
    parse_host_ip,
    parse_host_port,
    parse_port_key,
    port_map,
    ps_ports,
    requested_ports,
)


@pytest.mark.parametrize(
    "key,expected",
    [
        ("80/tcp", (80, "tcp")),
        ("80", (80, "tcp")),
        ("53/udp", (53, "udp")),
        ("8080/TCP", (8080, "tcp")),
        ("65535/udp", (65535, "udp")),
    ],
)
def test_parse_port_key(key, expected):
    assert parse_port_key(key) == expected


@pytest.mark.parametrize("key", ["0/tcp", "80/sctp", "http/tcp", "65536", "", "80-81/tcp", "-1"])
def test_parse_port_key_rejects(key):
    with pytest.raises(PortSpecError):
        parse_port_key(key)


def test_parse_host_port_and_ip():
    assert parse_host_port("") == (0, 0)
    assert parse_host_port(None) == (0, 0)
    assert parse_host_port("8080") == (8080, 8080)
    assert parse_host_port("8000-8010") == (8000, 8010)
    for bad in ("x", "9000-8000", "70000", "0-5", "1-2-3"):
        with pytest.raises(PortSpecError):
            parse_host_port(bad)
    assert parse_host_ip("") == "0.0.0.0"
    assert parse_host_ip("127.0.0.1") == "127.0.0.1"
    assert parse_host_ip("::1") == "::1" and parse_host_ip("[::]") == "::"  # IPv6 bindings (test_network_ipv6)
    with pytest.raises(PortSpecError):
        parse_host_ip("localhost")


def test_requested_ports_like_the_cli_sends_them():
    # docker run -p 8080:80 -p 127.0.0.1::81 -p 5353:53/udp -P, image exposing 80, 443 and 53/udp
    host_config = {
        "PortBindings": {
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
            "81/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
            "53/udp": [{"HostIp": "", "HostPort": "5353"}],
        },
        "PublishAllPorts": True,
    }
    config = {"ExposedPorts": {"80/tcp": {}, "443/tcp": {}, "53/udp": {}, "81/tcp": {}}}
    got = requested_ports(host_config, config)
    assert got == [
        PortRequest(53, "udp", "0.0.0.0", 5353, 5353),
        PortRequest(80, "tcp", "0.0.0.0", 8080, 8080),
        PortRequest(81, "tcp", "127.0.0.1", 0, 0),
        PortRequest(443, "tcp", "0.0.0.0", 0, 0),  # -P: only the port not bound explicitly
    ]
    assert requested_ports({"PortBindings": None}, {}) == []
    # exposed but not published and no -P: nothing to bind
    assert requested_ports({}, config) == []


def test_port_map_and_ps_ports():
    config = {"ExposedPorts": {"80/tcp": {}, "443/tcp": {}}}
    bindings = [
        {"HostIp": "0.0.0.0", "HostPort": 8080, "ContainerPort": 80, "Proto": "tcp"},
        {"HostIp": "127.0.0.1", "HostPort": 5353, "ContainerPort": 53, "Proto": "udp"},
    ]
    ports = port_map(bindings, config)
    assert ports == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
        "443/tcp": None,
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
    }
    assert ps_ports({"Ports": ports}, config) == [
        {"PrivatePort": 443, "Type": "tcp"},
        {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
    ]
    # a stopped container: no Ports in its settings, exposed ports still listed
    assert ps_ports({"Ports": {}}, config) == [{"PrivatePort": 80, "Type": "tcp"}, {"PrivatePort": 443, "Type": "tcp"}]


def _free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_reservations_conflict_between_containers(tmp_path):
    alloc = PortAllocator(str(tmp_path / "ports.json"))
    port = _free_port()
    got = alloc.reserve("a", [PortRequest(80, "tcp", "127.0.0.1", port, port)])
    assert got == [{"HostIp": "127.0.0.1", "HostPort": port, "ContainerPort": 80, "Proto": "tcp"}]
    with pytest.raises(PortAllocationError, match="Bind for 127.0.0.1:%d failed: port is already allocated" % port):
        alloc.reserve("b", [PortRequest(80, "tcp", "127.0.0.1", port, port)])
    # 0.0.0.0 overlaps every address; the same number on udp does not conflict
    with pytest.raises(PortAllocationError, match="already allocated"):
        alloc.reserve("b", [PortRequest(80, "tcp", "0.0.0.0", port, port)])
    assert alloc.reserve("b", [PortRequest(53, "udp", "127.0.0.1", port, port)])[0]["HostPort"] == port
    # persisted: a new allocator (engine restart) still refuses
    again = PortAllocator(str(tmp_path / "ports.json"))
    assert again.bindings_of("a") == got
    with pytest.raises(PortAllocationError):
        again.reserve("c", [PortRequest(81, "tcp", "127.0.0.1", port, port)])
    again.release("a")
    assert again.reserve("c", [PortRequest(81, "tcp", "127.0.0.1", port, port)])[0]["HostPort"] == port
    assert sorted(again.retain({"c"})) == ["b"]
    assert again.owners() == ["c"]


def test_port_used_by_another_program(tmp_path):
    alloc = PortAllocator(str(tmp_path / "ports.json"))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        with pytest.raises(PortAllocationError, match="listen tcp4 127.0.0.1:%d: bind: address already in use" % port):
            alloc.reserve("a", [PortRequest(80, "tcp", "127.0.0.1", port, port)])
        # a range skips the busy port
        got = alloc.reserve("a", [PortRequest(80, "tcp", "127.0.0.1", port, port + 20)])
        assert port < got[0]["HostPort"] <= port + 20
    finally:
        busy.close()
    assert alloc.bindings_of("x") == []


def test_random_ports_come_from_the_ephemeral_range_and_differ(tmp_path):
    lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    alloc = PortAllocator(str(tmp_path / "ports.json"))
    got = alloc.reserve(
        "a",
        [
            PortRequest(80, "tcp", "127.0.0.1"),
            PortRequest(443, "tcp", "127.0.0.1"),
            PortRequest(53, "udp", "127.0.0.1"),
        ],
    )
    tcp = [b["HostPort"] for b in got if b["Proto"] == "tcp"]
    assert len(set(tcp)) == 2
    assert all(lo <= b["HostPort"] <= hi for b in got)


def test_all_or_nothing(tmp_path):
    alloc = PortAllocator(str(tmp_path / "ports.json"))
    port = _free_port()
    alloc.reserve("a", [PortRequest(80, "tcp", "127.0.0.1", port, port)])
    with pytest.raises(PortAllocationError):
        alloc.reserve("b", [PortRequest(81, "tcp", "127.0.0.1"), PortRequest(80, "tcp", "127.0.0.1", port, port)])
    assert alloc.bindings_of("b") == []
    assert alloc.owners() == ["a"]
