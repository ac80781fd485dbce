"""Networks are isolated from each other, as Docker's (DOCKER-ISOLATION-STAGE-1/2): a real engine in a
network namespace this test creates, busybox containers on the default bridge, on user-defined
networks, on an enable_icc=false network and on an internal network, probed with ping and TCP.

Everything happens inside namespaces made here: the engine's ("engine host") and an "outside"
namespace behind a veth, standing for the host's uplink. The root namespace is never touched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import pytest

from dockyard.engine.network import nat, ruleset
from dockyard.engine.network.ruleset import BridgedNetwork, Rule
from tests.engine.netns_helper import TempNetns, cleanup_stale
from tests.engine.runtime_helper import RuntimeEngine

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nsenter", "unshare", "docker")),
    reason="needs root, iproute2, nsenter, unshare and the docker CLI",
)
pytest.importorskip("pyroute2")

DEFAULT_BRIDGE, BIP = "dyiso0", "10.90.0.1/24"
SUBNETS = {
    "neta": "10.91.0.0/24",
    "netb": "10.92.0.0/24",
    "quiet": "10.93.0.0/24",
    "inner": "10.94.0.0/24",
    "tmpnet": "10.95.0.0/24",
}
UPLINK_HOST, UPLINK_OUTSIDE = "10.250.9.1", "10.250.9.2"
API_PORT = 23760
HTTPD = ("httpd", "-f", "-p", "8080", "-h", "/etc")  # any GET answers "HTTP/1.0 404 ..."


def _gateway(subnet):
    return str(ipaddress.IPv4Network(subnet).network_address + 1)


def _nft_dump():
    """(handle, parsed rule, chain) of the engine's table, read in the calling thread's netns."""
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=2)
    try:
        return nat.nft_current_rules(nft)
    finally:
        nft.close()


def _nft_delete_chain_rules(chain):
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=2)
    try:
        for handle, _, rule_chain in nat.nft_current_rules(nft):
            if rule_chain == chain:
                nft.rule("del", table=nat.TABLE, chain=chain, handle=handle)
    finally:
        nft.close()


class NetnsEngine(RuntimeEngine):
    """The runtime tests' engine, but in a network namespace that outlives engine restarts."""

    def __init__(self, netns, extra):
        super().__init__()
        self.netns = netns
        self.extra = list(extra)

    def argv(self):
        argv = super().argv()
        assert argv[:2] == ["unshare", "--net"]
        return ["nsenter", "--net=" + self.netns.path, "unshare"] + argv[2:] + self.extra


class World:
    def __init__(self, eng, host, outside):
        self.eng, self.host, self.outside = eng, host, outside
        self.devices = {"bridge": DEFAULT_BRIDGE}
        self.subnets = {"bridge": str(ipaddress.IPv4Interface(BIP).network)}

    def create(self, name, *opts):
        out = self.eng.docker("network", "create", "--subnet", SUBNETS[name], *opts, name)
        self.devices[name] = "br-" + out.stdout.strip()[:12]
        self.subnets[name] = SUBNETS[name]

    def run(self, name, network, *cmd):
        self.eng.docker("run", "-d", "--name", name, "--network", network, "busybox", *(cmd or HTTPD))

    def ip(self, name):
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return self.eng.docker("inspect", "-f", fmt, name).stdout.strip()

    def ping(self, src, address):
        p = self.eng.docker("exec", src, "ping", "-c", "1", "-W", "2", address, check=False)
        return p.returncode == 0

    def http(self, src, address, port=8080, path="/"):
        """What a TCP connection from `src` to address:port gets back for an HTTP request ('' if none)."""
        script = "printf 'GET %s HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s %d" % (path, address, port)
        return self.eng.docker("exec", src, "sh", "-c", script, check=False).stdout

    def tcp(self, src, address, port=8080):
        return self.http(src, address, port).startswith("HTTP/1.")

    def expected_rules(self):
        nets = [
            BridgedNetwork(self.devices[name], ipaddress.IPv4Network(self.subnets[name]), name == "inner")
            for name in self.devices
        ]
        return ruleset.engine_rules(nets)

    def installed(self):
        return self.host.run(_nft_dump)

    def assert_rules_exact(self):
        dump = self.installed()
        parsed = [rule for _, rule, _ in dump]
        assert None not in parsed, dump  # nothing in the table that the engine did not write
        assert len(parsed) == len(set(parsed)), parsed  # no duplicates
        assert set(parsed) == set(self.expected_rules())
        return dump


@pytest.fixture(scope="module")
def world(pki):
    cleanup_stale()
    host, outside = TempNetns(), TempNetns()
    eng = None
    try:
        veth = "dyup%d" % (os.getpid() % 100000)
        subprocess.run(
            ["ip", "-n", host.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", outside.name],
            check=True,
            capture_output=True,
        )
        host.sh("ip", "addr", "add", UPLINK_HOST + "/30", "dev", veth)
        host.sh("ip", "link", "set", veth, "up")
        host.sh("ip", "route", "add", "default", "via", UPLINK_OUTSIDE)
        outside.sh("ip", "addr", "add", UPLINK_OUTSIDE + "/30", "dev", "eth0")
        outside.sh("ip", "link", "set", "eth0", "up")
        tls = ["--tlsverify", "--tlscacert", pki.server.ca, "--tlscert", pki.server.cert, "--tlskey", pki.server.key]
        extra = ["--opt", "bip=" + BIP, "--opt", "bridge=" + DEFAULT_BRIDGE, "-H", "tcp://0.0.0.0:%d" % API_PORT]
        eng = NetnsEngine(host, extra + tls)
        eng.start()
        eng.load_busybox()
        w = World(eng, host, outside)
        w.create("neta")
        w.create("netb")
        w.create("quiet", "-o", "com.docker.network.bridge.enable_icc=false")
        w.create("inner", "--internal")
        for name, network in (
            ("a1", "neta"),
            ("a2", "neta"),
            ("b1", "netb"),
            ("d1", "bridge"),
            ("q1", "quiet"),
            ("q2", "quiet"),
            ("i1", "inner"),
        ):
            w.run(name, network)
        yield w
    finally:
        if eng is not None:
            eng.cleanup()
        host.delete()
        outside.delete()


def test_installed_rules_are_exactly_the_networks(world):
    dump = world.assert_rules_exact()
    chains = {chain for _, _, chain in dump}
    assert chains == {ruleset.NAT_CHAIN, ruleset.FORWARD_CHAIN, ruleset.ISOLATION_CHAIN}
    assert world.host.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


def test_same_network_works_other_networks_do_not(world):
    a1, a2, b1, d1 = (world.ip(n) for n in ("a1", "a2", "b1", "d1"))
    # same network: ping and TCP; each container reaches its own gateway
    assert world.ping("a2", a1) and world.tcp("a2", a1)
    for name, net in (("a1", "neta"), ("b1", "netb"), ("d1", "bridge")):
        assert world.ping(name, _gateway(world.subnets[net])), name
    # across networks, both ways, user-defined and default bridge: nothing
    for src, dst in (("a2", b1), ("b1", a1), ("d1", a1), ("a1", d1), ("b1", d1)):
        assert not world.ping(src, dst), (src, dst)
        assert world.http(src, dst) == "", (src, dst)
    # and the world outside still answers everyone (masqueraded)
    for src in ("a1", "b1", "d1"):
        assert world.ping(src, UPLINK_OUTSIDE), src


def test_enable_icc_false_and_internal(world):
    q1, q2, i1, a1 = (world.ip(n) for n in ("q1", "q2", "i1", "a1"))
    # enable_icc=false: containers of the network do not reach each other, but do reach the gateway
    assert not world.ping("q1", q2) and world.http("q1", q2) == ""
    assert not world.ping("q2", q1)
    assert world.ping("q1", _gateway(SUBNETS["quiet"]))
    assert world.ping("q1", UPLINK_OUTSIDE)
    inspect = json.loads(world.eng.docker("network", "inspect", "quiet").stdout)[0]
    assert inspect["Options"] == {"com.docker.network.bridge.enable_icc": "false"}
    # internal: nothing in, nothing out (the uplink answers a1, not i1)
    assert not world.ping("i1", UPLINK_OUTSIDE) and not world.ping("i1", a1)
    assert not world.ping("a1", i1) and world.http("a1", i1) == ""


def test_host_addresses_stay_reachable_as_with_docker(world):
    """Docker filters forwarded traffic only: a container reaches every address of the host, also
    another network's gateway, and the engine's TCP port, which answers nothing without a client
    certificate (mutual TLS)."""
    assert world.ping("a1", _gateway(SUBNETS["netb"]))
    assert world.ping("d1", UPLINK_HOST)
    answer = world.http("d1", _gateway(world.subnets["bridge"]), API_PORT, "/_ping")
    assert "HTTP/1." not in answer and "OK" not in answer
    assert world.eng.docker("version", "--format", "{{.Server.Version}}").stdout.strip()


def test_the_rules_are_what_blocks_and_a_sync_repairs_them(world):
    b1 = world.ip("b1")
    world.host.run(_nft_delete_chain_rules, ruleset.FORWARD_CHAIN)
    assert world.ping("a2", b1)  # control: with the forward rules gone, A reaches B
    world.create("tmpnet")
    try:
        world.assert_rules_exact()
        assert not world.ping("a2", b1)
    finally:
        world.eng.docker("network", "rm", "tmpnet")
        del world.devices["tmpnet"], world.subnets["tmpnet"]


def test_rules_survive_an_engine_restart(world):
    before = world.assert_rules_exact()
    world.eng.restart()  # containers keep running; the engine comes back in the same namespace
    assert world.installed() == before
    assert not world.ping("a2", world.ip("b1")) and world.ping("a2", world.ip("a1"))
    world.run("a3", "neta")  # the first bridge use of this engine process syncs: nothing to change
    assert world.installed() == before
    assert world.tcp("a3", world.ip("a1")) and not world.ping("a3", world.ip("d1"))


def test_an_engine_restart_puts_flushed_rules_back(world):
    world.eng.stop()
    world.host.run(_nft_delete_chain_rules, ruleset.ISOLATION_CHAIN)  # what a firewall reload does
    world.eng.start()  # with containers running on bridges, the engine syncs at start
    world.assert_rules_exact()
    assert not world.ping("a2", world.ip("b1"))


def test_network_rm_takes_its_rules_away(world):
    device = world.devices["netb"]
    world.eng.docker("rm", "-f", "b1")
    world.eng.docker("network", "rm", "netb")
    del world.devices["netb"], world.subnets["netb"]
    dump = world.assert_rules_exact()
    assert not [r for _, r, _ in dump if any(m.value == device for m in r.matches)]
    assert device not in world.host.sh("ip", "-o", "link").stdout
    assert not world.ping("d1", world.ip("a1"))  # the others stay isolated
    assert world.eng.docker("version", "--format", "{{.Server.Version}}").stdout.strip()


def test_bad_enable_icc_is_refused(world):
    p = world.eng.docker("network", "create", "-o", "com.docker.network.bridge.enable_icc=maybe", "odd", check=False)
    assert p.returncode != 0
    assert "failed to parse com.docker.network.bridge.enable_icc value: maybe" in p.stderr
    assert "odd" not in world.eng.docker("network", "ls", "--format", "{{.Name}}").stdout.split()


# -- the rule sync alone, in a bare namespace ---------------------------------------------------------
@pytest.fixture
def bare():
    cleanup_stale()
    ns = TempNetns()
    yield ns
    ns.delete()


def _nets(*names):
    return [
        BridgedNetwork("br-" + n, ipaddress.IPv4Network("10.%d.0.0/24" % (60 + i)), n == "int")
        for i, n in enumerate(names)
    ]


def test_sync_adds_before_it_deletes_and_keeps_what_stays(bare):
    def scenario():
        fw = nat.Firewall()
        three = ruleset.engine_rules(_nets("x", "y", "int"))
        assert fw.setup(three) == "nftables"
        first = _nft_dump()
        assert sorted(map(repr, (r for _, r, _ in first))) == sorted(map(repr, three))
        fw.setup(three)
        assert _nft_dump() == first  # idempotent: the same rules, the same handles
        two = ruleset.engine_rules(_nets("x", "y"))
        fw.setup(two)
        second = _nft_dump()
        assert {r for _, r, _ in second} == set(two)
        kept = [entry for entry in first if entry[1] in set(two)]
        assert all(entry in second for entry in kept)  # untouched, never deleted and re-added
        fw.setup(ruleset.engine_rules(_nets("x", "y"), masquerade=False))
        assert {r.action for _, r, _ in _nft_dump()} == {ruleset.DROP, ruleset.JUMP_ISOLATION}
        fw.teardown()
        return _nft_dump()

    assert bare.run(scenario) == []


def test_iptables_spelling():
    net = BridgedNetwork("br-abc", ipaddress.IPv4Network("10.61.0.0/24"), True)
    specs = [" ".join(nat.iptables_spec(r)) for r in ruleset.engine_rules([net])]
    assert specs == [
        "-A DOCKYARD-ISOLATION-1 -i br-abc ! -o br-abc -j DROP",
        "-A DOCKYARD-ISOLATION-1 ! -i br-abc -o br-abc -j DROP",
        "-A DOCKYARD-ISOLATION-2 -o br-abc -j DROP",
    ]
    plain = BridgedNetwork("dyiso0", ipaddress.IPv4Network("10.90.0.0/24"))
    assert [" ".join(nat.iptables_spec(r)) for r in ruleset.engine_rules([plain])] == [
        "-A DOCKYARD-POSTROUTING -s 10.90.0.0/24 ! -o dyiso0 -j MASQUERADE",
        "-A DOCKYARD-ISOLATION-1 -i dyiso0 ! -o dyiso0 -j DOCKYARD-ISOLATION-2",
        "-A DOCKYARD-ISOLATION-2 -o dyiso0 -j DROP",
    ]
    assert isinstance(ruleset.engine_rules([plain])[0], Rule)


@pytest.mark.skipif(shutil.which("iptables") is None, reason="no iptables binary")
def test_iptables_fallback_sync(bare, monkeypatch):
    def no_nftables(rules):
        raise OSError("nf_tables unavailable (test)")

    monkeypatch.setattr(nat, "_nft_sync", no_nftables)
    binary = shutil.which("iptables")
    three = ruleset.engine_rules(_nets("x", "y", "int"))
    two = ruleset.engine_rules(_nets("x", "y"))

    def listed():
        out = []
        for table, chain, _ in nat.IPTABLES_CHAINS.values():
            out += nat.iptables_listed(binary, table, chain)
        return sorted(out)

    def scenario():
        legacy = ["-s", "10.60.0.0/24", "!", "-o", "br-x", "-j", "MASQUERADE", "-m", "comment", "--comment", "dockyard"]
        subprocess.run([binary, "-t", "nat", "-A", "POSTROUTING"] + legacy, check=True)
        fw = nat.Firewall()
        assert fw.setup(three) == "iptables"  # nftables made to fail: the fallback
        assert nat.iptables_listed(binary, "nat", "POSTROUTING") == ["-A POSTROUTING -j DOCKYARD-POSTROUTING"]
        nat.iptables_sync(binary, three)
        assert listed() == sorted(" ".join(nat.iptables_spec(r)) for r in three)
        nat.iptables_sync(binary, two)
        assert listed() == sorted(" ".join(nat.iptables_spec(r)) for r in two)
        forward = nat.iptables_listed(binary, "filter", "FORWARD")
        assert forward == ["-A FORWARD -j DOCKYARD-ISOLATION-1"]
        nat.iptables_teardown(binary)
        return subprocess.run([binary, "-S", "DOCKYARD-ISOLATION-1"], capture_output=True).returncode

    assert bare.run(scenario) != 0  # the chain is gone


def test_icc_engine_option_is_the_default_bridges(tmp_path):
    from dockyard.engine.errors import InvalidParameter
    from dockyard.engine.network.hostsetup import ICC_OPTION, parse_go_bool
    from dockyard.engine.network.manager import NetworkManager

    quiet = NetworkManager(str(tmp_path / "a"), {"icc": "false"})
    assert quiet.icc(quiet.catalog.default) is False
    assert quiet.inspect("bridge")["Options"][ICC_OPTION] == "false"
    chatty = NetworkManager(str(tmp_path / "b"))
    assert chatty.icc(chatty.catalog.default) is True
    assert chatty.inspect("bridge")["Options"][ICC_OPTION] == "true"
    assert [parse_go_bool(ICC_OPTION, v) for v in ("1", "t", "TRUE", "0", "F", "false")] == [True] * 3 + [False] * 3
    for bad in ("yes", "", " true", None):
        with pytest.raises(InvalidParameter):
            parse_go_bool(ICC_OPTION, bad)
