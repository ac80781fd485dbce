"""Outbound NAT for the bridge subnet and IPv4 forwarding, in the engine's network namespace.

Approach: an nftables table `ip dockyard` written over netlink with pyroute2 (no `nft`
binary needed) holding one rule per bridged network, `ip saddr SUBNET oifname != BRIDGE
masquerade`, in a postrouting nat chain. Kernels or sandboxes without nf_tables fall back to the legacy
`iptables` binary when it is installed; otherwise setup() raises NatUnavailable and the
engine shows the reason in /info Warnings (containers then reach only this host).
"""

import ipaddress
import logging
import shutil
import subprocess

log = logging.getLogger("dockyard.engine")

TABLE = "dockyard"
CHAIN = "postrouting"
_NFPROTO_IPV4 = 2
_NFT_META_OIFNAME = 7
_NFT_CMP_EQ, _NFT_CMP_NEQ = 0, 1
_NF_ACCEPT = 1
_IFNAMSIZ = 16
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


class NatUnavailable(Exception):
    """Masquerading could not be set up; the message says why and what to install."""


def enable_ip_forward(path=_IP_FORWARD):
    """Turn on IPv4 forwarding for this network namespace (the engine host's)."""
    with open(path, "r+") as fh:
        if fh.read().strip() != "1":
            fh.seek(0)
            fh.write("1\n")


def _ifname_bytes(name):
    return name.encode("ascii").ljust(_IFNAMSIZ, b"\0")


def _masquerade_expressions(network, bridge):
    from pyroute2.nftables.expressions import genex

    def value(data):
        return {"attrs": [("NFTA_DATA_VALUE", data)]}

    return [
        # ip saddr & mask == network
        genex("payload", {"dreg": 1, "base": 1, "offset": 12, "len": 4}),
        genex(
            "bitwise",
            {"sreg": 1, "dreg": 1, "len": 4, "mask": value(network.netmask.packed), "xor": value(b"\0\0\0\0")},
        ),
        genex("cmp", {"sreg": 1, "op": _NFT_CMP_EQ, "data": value(network.network_address.packed)}),
        # oifname != bridge: traffic between containers keeps its addresses
        genex("meta", {"key": _NFT_META_OIFNAME, "dreg": 1}),
        genex("cmp", {"sreg": 1, "op": _NFT_CMP_NEQ, "data": value(_ifname_bytes(bridge))}),
        genex("masq", {}),
    ]


def _rule_values(rule):
    """The cmp constants of a dumped rule: enough to recognise ours."""
    found = []
    for expr in rule.get_attr("NFTA_RULE_EXPRESSIONS") or []:
        if expr.get_attr("NFTA_EXPR_NAME") != "cmp":
            continue
        data = expr.get_attr("NFTA_EXPR_DATA")
        cmp_data = data.get_attr("NFTA_CMP_DATA") if data else None
        if cmp_data is not None:
            found.append(cmp_data.get_attr("NFTA_DATA_VALUE"))
    return found


def _wanted_values(rules):
    return sorted([network.network_address.packed, _ifname_bytes(bridge)] for network, bridge in rules)


def _nft_current_values(nft):
    found = []
    for rule in nft.get_rules():
        if rule.get_attr("NFTA_RULE_TABLE") == TABLE and rule.get_attr("NFTA_RULE_CHAIN") == CHAIN:
            found.append(
                [v if isinstance(v, bytes) else bytes.fromhex(str(v).replace(":", "")) for v in _rule_values(rule)]
            )
    return sorted(found)


def _nft_setup(rules):
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=_NFPROTO_IPV4)
    try:
        tables = [t.get_attr("NFTA_TABLE_NAME") for t in nft.get_tables()]
        if TABLE in tables:
            if rules and _nft_current_values(nft) == _wanted_values(rules):
                return  # already right (engine restart): no gap for running containers
            nft.table("del", name=TABLE)
        if not rules:
            return
        nft.table("add", name=TABLE)
        nft.chain("add", table=TABLE, name=CHAIN, hook="postrouting", type="nat", priority=100, policy=_NF_ACCEPT)
        for network, bridge in rules:
            nft.rule("add", table=TABLE, chain=CHAIN, expressions=[_masquerade_expressions(network, bridge)])
    finally:
        nft.close()


def _nft_teardown():
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=_NFPROTO_IPV4)
    try:
        if TABLE in [t.get_attr("NFTA_TABLE_NAME") for t in nft.get_tables()]:
            nft.table("del", name=TABLE)
    finally:
        nft.close()


def _iptables_rule(network, bridge):
    return [
        "-t",
        "nat",
        "POSTROUTING",
        "-s",
        str(network),
        "!",
        "-o",
        bridge,
        "-j",
        "MASQUERADE",
        "-m",
        "comment",
        "--comment",
        "dockyard",
    ]


def _iptables(binary, action, network, bridge):
    rule = _iptables_rule(network, bridge)
    argv = [binary, "-w", rule[0], rule[1], action] + rule[2:]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True
    )


def _iptables_setup(rules, stale=()):
    binary = shutil.which("iptables")
    if not binary:
        return None
    for network, bridge in stale:
        _iptables(binary, "-D", network, bridge)
    for network, bridge in rules:
        if _iptables(binary, "-C", network, bridge).returncode == 0:
            continue
        proc = _iptables(binary, "-A", network, bridge)
        if proc.returncode != 0:
            raise NatUnavailable("iptables failed: %s" % proc.stderr.strip())
    return binary


class Nat:
    """Masquerading of each bridged subnet leaving through any device but its own bridge."""

    def __init__(self):
        self.rules = []
        self.method = None  # "nftables" or "iptables" once set up

    def setup(self, rules):
        """Make the rule set exactly `rules`: [(subnet, bridge device), ...]. -> method used."""
        rules = [(ipaddress.IPv4Network(net, strict=False), dev) for net, dev in rules]
        stale = [r for r in self.rules if r not in rules]
        try:
            _nft_setup(rules)
            self.method, self.rules = "nftables", rules
            return self.method
        except ImportError as exc:
            nft_error = "pyroute2 is missing (%s)" % exc
        except Exception as exc:  # NetlinkError, OSError: no nf_tables in this kernel/sandbox
            nft_error = "nftables: %s" % (exc,)
        log.info("nftables NAT setup failed (%s); trying iptables", nft_error)
        try:
            if _iptables_setup(rules, stale):
                self.method, self.rules = "iptables", rules
                return self.method
        except (OSError, NatUnavailable) as exc:
            raise NatUnavailable("outbound NAT unavailable: %s; %s" % (nft_error, exc)) from None
        raise NatUnavailable(
            "outbound NAT unavailable: install nftables (kernel nf_tables) or "
            "iptables (%s; no iptables binary)" % nft_error
        )

    def teardown(self):
        """Remove what setup() installed (best effort)."""
        try:
            if self.method == "nftables":
                _nft_teardown()
            elif self.method == "iptables":
                binary = shutil.which("iptables")
                for network, bridge in self.rules if binary else ():
                    _iptables(binary, "-D", network, bridge)
        except Exception as exc:
            log.warning("removing NAT rules failed: %s", exc)
        self.method, self.rules = None, []
