"""IPv6 and dual-stack user networks, as dockerd makes them: a real engine in a network namespace this test
creates (and an "outside" namespace behind a dual-stack veth standing for the uplink), busybox containers,
the real docker CLI and docker-py. Covers `network create --ipv6` with v4 and v6 subnets, gateways and
ranges, inspect fields, `--ip6` on run and `network connect`, the v6 default route, /etc/hosts, AAAA
answers of the embedded DNS, isolation between networks and masquerading for IPv6 (the same ruleset in the
ip6 family), published ports on IPv6 host addresses, and the refusals of bad input.

Only private addresses, on veths and bridges of namespaces made here; the root namespace is never touched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import pytest

from dockyard.engine.network import nat, ruleset
from dockyard.engine.network.ruleset import BridgedNetwork
from tests.engine.netns_helper import TempNetns, cleanup_stale
from tests.engine.test_network_isolation import NetnsEngine

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nsenter", "unshare", "docker")),
    reason="needs root, iproute2, nsenter, unshare and the docker CLI",
)
pytest.importorskip("pyroute2")

DEFAULT_BRIDGE, BIP = "dy6br0", "10.80.0.1/24"
V4 = {"six": "10.81.0.0/24", "other6": "10.82.0.0/24", "plain": "10.83.0.0/24"}
V6 = {"bridge": "fd00:80::/64", "six": "fd00:81::/64", "other6": "fd00:82::/64"}  # bridge: fixed-cidr-v6
UPLINK_HOST, UPLINK_OUTSIDE = "fd00:250::1", "fd00:250::2"
UPLINK4_HOST, UPLINK4_OUTSIDE = "10.250.8.1", "10.250.8.2"
HTTPD = ("httpd", "-f", "-p", "8080", "-h", "/etc")  # any GET answers "HTTP/1.0 404 ..."


def _nft6_dump():
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=10)
    try:
        return nat.nft_current_rules(nft)
    finally:
        nft.close()


def _nft6_delete_chain_rules(chain):
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=10)
    try:
        for handle, _, rule_chain in nat.nft_current_rules(nft):
            if rule_chain == chain:
                nft.rule("del", table=nat.TABLE, chain=chain, handle=handle)
    finally:
        nft.close()


class World:
    def __init__(self, eng, host, outside):
        self.eng, self.host, self.outside = eng, host, outside
        self.devices = {"bridge": DEFAULT_BRIDGE}

    def docker(self, *args, check=True):
        return self.eng.docker(*args, check=check)

    def create(self, name, *opts):
        out = self.docker("network", "create", *opts, name)
        self.devices[name] = "br-" + out.stdout.strip()[:12]

    def run(self, name, network, *opts):
        self.docker("run", "-d", "--name", name, "--network", network, *opts, "busybox", *HTTPD)

    def endpoint(self, name, network):
        fmt = "{{json (index .NetworkSettings.Networks %s)}}" % json.dumps(network)
        return json.loads(self.docker("inspect", "-f", fmt, name).stdout)

    def sh(self, name, script, check=False):
        return self.docker("exec", name, "sh", "-c", script, check=check)

    def ping6(self, src, address):
        return self.docker("exec", src, "ping", "-6", "-c", "1", "-W", "2", address, check=False).returncode == 0

    def http(self, src, address, port=8080):
        """What a TCP connection from `src` to [address]:port gets back for an HTTP request ('' if none)."""
        script = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s %d" % (address, port)
        return self.sh(src, script).stdout


@pytest.fixture(scope="module")
def world():
    cleanup_stale()
    host, outside = TempNetns(), TempNetns()
    eng = None
    try:
        veth = "dy6up%d" % (os.getpid() % 10000)
        subprocess.run(
            ["ip", "-n", host.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", outside.name],
            check=True,
            capture_output=True,
        )
        host.sh("ip", "addr", "add", UPLINK4_HOST + "/30", "dev", veth)
        host.sh("ip", "-6", "addr", "add", UPLINK_HOST + "/64", "dev", veth, "nodad")
        host.sh("ip", "link", "set", veth, "up")
        host.sh("ip", "route", "add", "default", "via", UPLINK4_OUTSIDE)
        host.sh("ip", "-6", "route", "add", "default", "via", UPLINK_OUTSIDE)
        outside.sh("ip", "addr", "add", UPLINK4_OUTSIDE + "/30", "dev", "eth0")
        outside.sh("ip", "-6", "addr", "add", UPLINK_OUTSIDE + "/64", "dev", "eth0", "nodad")
        outside.sh("ip", "link", "set", "eth0", "up")
        opts = ["bip=" + BIP, "bridge=" + DEFAULT_BRIDGE, "ipv6=true", "fixed-cidr-v6=" + V6["bridge"]]
        eng = NetnsEngine(host, [arg for opt in opts for arg in ("--opt", opt)])
        eng.start()
        eng.load_busybox()
        w = World(eng, host, outside)
        w.create("six", "--ipv6", "--subnet", V4["six"], "--subnet", V6["six"], "--ip-range", "fd00:81::100/120")
        w.create("other6", "--ipv6", "--subnet", V4["other6"], "--subnet", V6["other6"])
        w.create("plain", "--subnet", V4["plain"])
        w.run("s1", "six")
        w.run("s2", "six", "--ip6", "fd00:81::42")
        w.run("o1", "other6")
        w.run("p1", "plain")
        w.run("d1", "bridge")
        yield w
    finally:
        if eng is not None:
            eng.cleanup()
        host.delete()
        outside.delete()


def test_dual_stack_network_inspect(world):
    net = json.loads(world.docker("network", "inspect", "six").stdout)[0]
    assert net["EnableIPv6"] is True and net["EnableIPv4"] is True
    assert net["IPAM"]["Config"] == [
        # as dockerd 20.10: no Gateway key when none was given
        {"Subnet": "10.81.0.0/24"},
        {"Subnet": "fd00:81::/64", "IPRange": "fd00:81::100/120"},
    ]
    members = {m["Name"]: m for m in net["Containers"].values()}
    assert members["s2"]["IPv6Address"] == "fd00:81::42/64"
    assert members["s1"]["IPv4Address"].startswith("10.81.0.")
    plain = json.loads(world.docker("network", "inspect", "plain").stdout)[0]
    assert plain["EnableIPv6"] is False and len(plain["IPAM"]["Config"]) == 1
    # docker-py sees the same
    client = world.eng.client()
    assert client.networks.get("six").attrs["EnableIPv6"] is True


def test_default_bridge_with_fixed_cidr_v6(world):
    """dockerd's --ipv6 --fixed-cidr-v6 as engine opts: the default bridge is dual-stack."""
    net = json.loads(world.docker("network", "inspect", "bridge").stdout)[0]
    assert net["EnableIPv6"] is True
    assert net["IPAM"]["Config"] == [
        {"Subnet": "10.80.0.0/24", "Gateway": "10.80.0.1"},
        {"Subnet": "fd00:80::/64", "Gateway": "fd00:80::1"},
    ]
    settings = json.loads(world.docker("inspect", "-f", "{{json .NetworkSettings}}", "d1").stdout)
    assert settings["GlobalIPv6Address"] == "fd00:80::2" and settings["GlobalIPv6PrefixLen"] == 64  # top level too
    assert settings["IPv6Gateway"] == "fd00:80::1" == settings["Networks"]["bridge"]["IPv6Gateway"]
    assert world.ping6("d1", "fd00:80::1") and world.ping6("d1", UPLINK_OUTSIDE)
    assert not world.ping6("d1", world.endpoint("s2", "six")["GlobalIPv6Address"])  # isolated from six


def test_default_bridge_ipv6_opts_are_checked(tmp_path):
    from dockyard.engine.network.manager import NetworkManager

    for opts, text in (
        ({"ipv6": "true"}, "needs both"),
        ({"fixed-cidr-v6": "fd00:1::/64"}, "needs both"),
        ({"ipv6": "true", "fixed-cidr-v6": "10.1.0.0/16"}, "want an IPv6 CIDR"),
        ({"ipv6": "true", "fixed-cidr-v6": "fd00:1::/127"}, "too small"),
    ):
        with pytest.raises(ValueError, match=text):
            NetworkManager(str(tmp_path / "x"), opts)
    ok = NetworkManager(str(tmp_path / "y"), {"ipv6": "true", "fixed-cidr-v6": "fd00:1::1/64"})
    assert str(ok.catalog.default.subnet6) == "fd00:1::/64" and str(ok.catalog.default.gateway6) == "fd00:1::1"


def test_container_addresses_route_and_hosts(world):
    s1, s2 = world.endpoint("s1", "six"), world.endpoint("s2", "six")
    # dockerd 20.10: without --gateway the range's first address is the gateway, the next one the first container's
    assert s1["GlobalIPv6Address"] == "fd00:81::101" and s1["Gateway"] == "10.81.0.1"
    assert s1["IPv6Gateway"] == "fd00:81::100" and s1["GlobalIPv6PrefixLen"] == 64
    assert s2["GlobalIPv6Address"] == "fd00:81::42"
    assert s2["IPAMConfig"] == {"IPv6Address": "fd00:81::42"}
    p1 = world.endpoint("p1", "plain")
    assert p1["GlobalIPv6Address"] == "" and p1["IPv6Gateway"] == "" and p1["GlobalIPv6PrefixLen"] == 0
    addrs = world.sh("s2", "ip -6 addr show dev eth0", check=True).stdout
    line = next(x for x in addrs.splitlines() if "fd00:81::42" in x)
    assert "inet6 fd00:81::42/64" in line and "tentative" not in line  # usable at once (no DAD)
    assert "default via fd00:81::100" in world.sh("s2", "ip -6 route", check=True).stdout
    hosts = world.sh("s2", "cat /etc/hosts", check=True).stdout.splitlines()
    hostname = world.sh("s2", "hostname", check=True).stdout.strip()
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in hosts
    assert "fd00:81::42\t%s" % hostname in hosts and "%s\t%s" % (s2["IPAddress"], hostname) in hosts
    # the same network over IPv6: ping and TCP; the gateway answers
    assert world.ping6("s1", "fd00:81::42") and world.http("s1", "fd00:81::42").startswith("HTTP/1.")
    assert world.ping6("s1", "fd00:81::100")


def test_embedded_dns_answers_aaaa(world):
    out = world.sh("s1", "nslookup -type=AAAA s2 127.0.0.11", check=True).stdout
    assert "fd00:81::42" in out
    out = world.sh("s1", "nslookup -type=A s2 127.0.0.11", check=True).stdout
    assert world.endpoint("s2", "six")["IPAddress"] in out and "fd00:81::42" not in out
    assert world.ping6("s1", "s2")  # the name resolves to its IPv6 address for an IPv6 client
    # a name of an IPv4-only network has no AAAA record: an empty answer, not another network's
    world.docker("run", "-d", "--name", "p2", "--network", "plain", "busybox", *HTTPD)
    try:
        out = world.sh("p2", "nslookup -type=AAAA p1 127.0.0.11").stdout
        assert "fd00" not in out and world.endpoint("p1", "plain")["IPAddress"] not in out
    finally:
        world.docker("rm", "-f", "p2")


def test_isolation_and_masquerading_hold_for_ipv6(world):
    o1 = world.endpoint("o1", "other6")["GlobalIPv6Address"]
    s1 = world.endpoint("s1", "six")["GlobalIPv6Address"]
    assert world.host.sh("cat", "/proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "1"
    assert not world.ping6("s1", o1) and world.http("s1", o1) == ""
    assert not world.ping6("o1", s1)
    # the outside answers, masqueraded (it has no route back to fd00:81::/64)
    assert world.ping6("s1", UPLINK_OUTSIDE) and world.ping6("o1", UPLINK_OUTSIDE)
    # the ip6 table holds exactly the ruleset for the IPv6 family
    nets = []
    for name, device in world.devices.items():
        subnet = ipaddress.IPv6Network(V6[name]) if name in V6 else None
        nets.append(BridgedNetwork(device, subnet, False))
    parsed = [rule for _, rule, _ in world.host.run(_nft6_dump)]
    assert None not in parsed and len(parsed) == len(set(parsed))
    assert set(parsed) == set(ruleset.engine_rules(nets))
    # the rules are what blocks: without the forward chain's rules s1 reaches o1, a sync puts them back
    world.host.run(_nft6_delete_chain_rules, ruleset.FORWARD_CHAIN)
    assert world.ping6("s1", o1)
    world.create("tmp6", "--ipv6", "--subnet", "10.84.0.0/24", "--subnet", "fd00:84::/64")
    try:
        assert not world.ping6("s1", o1)
    finally:
        world.docker("network", "rm", "tmp6")
        del world.devices["tmp6"]
    assert not [r for _, r, _ in world.host.run(_nft6_dump) if any(m.value == "fd00:84::/64" for m in r.matches)]


def test_connect_with_ip6_and_disconnect(world):
    world.docker("network", "connect", "--ip6", "fd00:82::77", "other6", "s1")
    try:
        ep = world.endpoint("s1", "other6")
        assert ep["GlobalIPv6Address"] == "fd00:82::77" and ep["IPAMConfig"] == {"IPv6Address": "fd00:82::77"}
        assert "inet6 fd00:82::77/64" in world.sh("s1", "ip -6 addr show dev eth1", check=True).stdout
        assert world.ping6("o1", "fd00:82::77")
        p = world.docker("network", "connect", "--ip6", "fd00:82::77", "other6", "s2", check=False)
        assert p.returncode != 0 and "already in use" in p.stderr.lower()
    finally:
        world.docker("network", "disconnect", "other6", "s1")
    assert not world.ping6("o1", "fd00:82::77")
    # the address is free again: docker-py connects another container to it
    client = world.eng.client()
    client.networks.get("other6").connect("s2", ipv6_address="fd00:82::77")
    try:
        assert world.endpoint("s2", "other6")["GlobalIPv6Address"] == "fd00:82::77"
    finally:
        client.networks.get("other6").disconnect("s2")


def _answer(world, address, port):
    """What an HTTP request to [address]:port from the engine's host namespace gets (retried while starting)."""
    code = (
        "import socket, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        s = socket.create_connection((%r, %d), timeout=3); break\n"
        "    except OSError: time.sleep(0.1)\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100).decode())\n" % (address, port)
    )
    return world.host.python(code).stdout


def test_published_ports_on_ipv6_host_addresses(world):
    world.docker("run", "-d", "--name", "web6", "--network", "six", "-p", "[::]:18080:8080", "busybox", *HTTPD)
    world.docker("run", "-d", "--name", "web4", "--network", "plain", "-p", "[::1]:18081:8080", "busybox", *HTTPD)
    world.docker("run", "-d", "--name", "webd", "--network", "plain", "-p", "18082:8080", "busybox", *HTTPD)
    try:
        ports = json.loads(world.docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", "web6").stdout)
        assert ports == {"8080/tcp": [{"HostIp": "::", "HostPort": "18080"}]}
        # to the container's IPv6 address, and to an IPv4-only container's IPv4 address
        assert _answer(world, "::1", 18080).startswith("HTTP/1.")
        assert _answer(world, "::1", 18081).startswith("HTTP/1.")
        # every address, as dockerd 20.10: 0.0.0.0 and ::, the same port, both answer
        ports = json.loads(world.docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", "webd").stdout)
        assert ports == {
            "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18082"}, {"HostIp": "::", "HostPort": "18082"}]
        }
        assert _answer(world, "::1", 18082).startswith("HTTP/1.")
        assert _answer(world, "127.0.0.1", 18082).startswith("HTTP/1.")
        assert "0.0.0.0:18082->8080/tcp" in world.docker("ps", "--filter", "name=webd").stdout
        # an IPv6 binding is a listener of its own: [::]:18080 is taken, 127.0.0.1:18080 is not
        p = world.docker("run", "-d", "--name", "web6b", "--network", "six", "-p", "18080:8080", "busybox",
                         "true", check=False)  # fmt: skip
        assert p.returncode != 0 and "Bind for :::18080 failed: port is already allocated" in p.stderr, p.stderr
        world.docker("run", "-d", "--name", "web4b", "--network", "plain", "-p", "127.0.0.1:18080:8080", "busybox",
                     *HTTPD)  # fmt: skip
        assert _answer(world, "127.0.0.1", 18080).startswith("HTTP/1.")
    finally:
        world.docker("rm", "-f", "web6", "web4", "webd", "web4b", "web6b", check=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subnet", "fd00:90::/64"], "without --ipv6"),
        (["--ipv6", "--subnet", "10.85.0.0/24", "--subnet", "fd00:81::/80"], "Pool overlaps"),
        (["--ipv6", "--subnet", "fd00:93::/64", "--subnet", "fd00:94::/64"], "at most one IPv6 subnet"),
        (["--ipv6", "--subnet", "fd00:97::/127"], "too small"),
    ],
)
def test_bad_network_create_is_refused(world, args, message):
    p = world.docker("network", "create", *args, "badnet", check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert "badnet" not in world.docker("network", "ls", "--format", "{{.Name}}").stdout.split()


@pytest.mark.parametrize(
    "pool, message",
    [
        ({"subnet": "fd00:91::/64", "gateway": "fd00:92::1"}, "gateway fd00:92::1 is not a host address of"),
        ({"subnet": "fd00:91::/64", "gateway": "fd00:91::"}, "is not a host address of"),
        ({"subnet": "fd00:95::/64", "iprange": "fd00:96::/120"}, "not within subnet"),
        ({"subnet": "fd00:95::/64", "aux_addresses": {"x": "fd00:96::9"}}, "must belong to the master pool"),
    ],
)
def test_bad_pools_sent_by_docker_py_are_refused(world, pool, message):
    """What the CLI already refuses on its side, sent to the engine by docker-py."""
    import docker

    client = world.eng.client()
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(**pool)])
    with pytest.raises(docker.errors.APIError) as info:
        client.networks.create("badnet", enable_ipv6=True, ipam=ipam)
    assert info.value.response.status_code == 400 and message in str(info.value), str(info.value)
    assert "badnet" not in world.docker("network", "ls", "--format", "{{.Name}}").stdout.split()


def test_bad_ip6_requests_are_refused(world):
    p = world.docker("run", "--rm", "--network", "plain", "--ip6", "fd00:83::5", "busybox", "true", check=False)
    assert p.returncode != 0 and "has no IPv6 subnet" in p.stderr, p.stderr
    p = world.docker("run", "--rm", "--network", "six", "--ip6", "fd00:99::5", "busybox", "true", check=False)
    assert p.returncode != 0 and "It does not belong to any of this network's subnets (fd00:81::/64)" in p.stderr, (
        p.stderr
    )
    p = world.docker("network", "connect", "--ip6", "fd00:83::5", "plain", "s1", check=False)
    assert p.returncode != 0 and "has no IPv6 subnet" in p.stderr, p.stderr


def test_ipv6_without_a_subnet_gets_a_unique_local_one(world):
    world.create("auto6", "--ipv6")
    try:
        config = json.loads(world.docker("network", "inspect", "auto6").stdout)[0]["IPAM"]["Config"]
        assert len(config) == 2
        six = ipaddress.IPv6Network(config[1]["Subnet"])
        assert six.prefixlen == 64 and six.subnet_of(ipaddress.IPv6Network("fd00::/8"))
        assert config[1]["Gateway"] == str(six.network_address + 1)
    finally:
        world.docker("network", "rm", "auto6")
        del world.devices["auto6"]


def test_ip6tables_spelling():
    net = BridgedNetwork("br-six", ipaddress.IPv6Network("fd00:81::/64"))
    assert [" ".join(nat.iptables_spec(r)) for r in ruleset.engine_rules([net])] == [
        "-A DOCKYARD-POSTROUTING -s fd00:81::/64 ! -o br-six -j MASQUERADE",
        "-A DOCKYARD-ISOLATION-1 -i br-six ! -o br-six -j DOCKYARD-ISOLATION-2",
        "-A DOCKYARD-ISOLATION-2 -o br-six -j DROP",
    ]
    assert nat.Firewall(family=6).binary_name == "ip6tables"


def test_an_engine_restart_keeps_ipv6(world):
    """Last in the module: the engine restarts in its namespace; running containers keep their IPv6
    addresses, the ip6 rules stay as they were, a new container gets a fresh address of the same pool."""
    before = world.host.run(_nft6_dump)
    s1 = world.endpoint("s1", "six")["GlobalIPv6Address"]
    world.eng.restart()
    assert world.host.run(_nft6_dump) == before
    world.run("s3", "six")
    s3 = world.endpoint("s3", "six")["GlobalIPv6Address"]
    assert s3 not in (s1, "fd00:81::42") and ipaddress.IPv6Address(s3) in ipaddress.IPv6Network("fd00:81::100/120")
    assert world.ping6("s3", s1) and world.ping6("s3", "s2")
    assert not world.ping6("s3", world.endpoint("o1", "other6")["GlobalIPv6Address"])
    world.docker("rm", "-f", "s3")
