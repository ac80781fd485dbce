"""The engine's packet filter in its network namespace: installs ruleset.py's rules, and IPv4 forwarding.

Approach: an nftables table `ip dockyard` written over netlink with pyroute2 (no `nft` binary
needed): a postrouting nat chain (masquerading), a forward filter chain and the regular chain
isolation-stage-2 (network isolation). Kernels or sandboxes without nf_tables fall back to the
`iptables` binary when it is installed (chains DOCKYARD-POSTROUTING, DOCKYARD-ISOLATION-1/2 jumped
to from POSTROUTING and FORWARD); otherwise setup() raises FirewallUnavailable and the engine shows
the reason in /info Warnings.

IPv6 (dual-stack networks): the same rules in a table `ip6 dockyard` (or through `ip6tables`), by a
Firewall(family=6); a rule's saddr match is then on the IPv6 header's source address.

Both ways are a sync, not a rebuild: missing rules are added first, then rules that are no longer
wanted are deleted, so an engine restart or a `network create/rm` never leaves a moment without
masquerading or isolation for the networks that stay. The rules live in the kernel: they outlive
an engine restart, and the next sync finds them in place.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from dockyard.engine.network.ruleset import (
    DROP,
    FORWARD_CHAIN,
    IIFNAME,
    ISOLATION_CHAIN,
    JUMP_ISOLATION,
    MASQUERADE,
    NAT_CHAIN,
    OIFNAME,
    SADDR,
    Match,
    Rule,
)

log = logging.getLogger("dockyard.engine")

TABLE = "dockyard"
_NFPROTO_IPV4 = 2
_NFPROTO_IPV6 = 10
_NFT_META_IIFNAME, _NFT_META_OIFNAME = 6, 7
_NFT_CMP_EQ, _NFT_CMP_NEQ = 0, 1
_NF_DROP, _NF_ACCEPT, _NFT_JUMP = 0, 1, -3
_NFT_PAYLOAD_NETWORK_HEADER = 1
_IFNAMSIZ = 16
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IPV6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"
# The source address in the network header: (offset, length) for IPv4 and IPv6.
_SADDR_AT = {4: (12, 4), 6: (8, 16)}

# nftables base chains of the table (the isolation chain is a regular chain: no hook).
_NFT_CHAINS: Tuple[Tuple[str, Dict[str, object]], ...] = (
    (NAT_CHAIN, {"hook": "postrouting", "type": "nat", "priority": 100, "policy": _NF_ACCEPT}),
    (FORWARD_CHAIN, {"hook": "forward", "type": "filter", "priority": 0, "policy": _NF_ACCEPT}),
    (ISOLATION_CHAIN, {}),
)


class FirewallUnavailable(Exception):
    """The rules could not be installed; the message says why and what to install."""


def enable_ip_forward(path: str = _IP_FORWARD) -> None:
    """Turn on IPv4 forwarding (or IPv6's: IPV6_FORWARD) for this network namespace (the engine host's)."""
    with open(path, "r+") as fh:
        if fh.read().strip() != "1":
            fh.seek(0)
            fh.write("1\n")


# -- nftables over netlink ------------------------------------------------------------------------
def _ifname_bytes(name: str) -> bytes:
    return name.encode("ascii").ljust(_IFNAMSIZ, b"\0")


def _data(value: bytes) -> dict:
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


def _verdict(code: int, chain: Optional[str] = None) -> dict:
    attrs: List[Tuple[str, object]] = [("NFTA_VERDICT_CODE", code)]
    if chain:
        attrs.append(("NFTA_VERDICT_CHAIN", chain))
    return {"attrs": [("NFTA_DATA_VERDICT", {"attrs": attrs})]}


def nft_expressions(rule: Rule) -> list:
    """The netlink expressions of one rule."""
    from pyroute2.nftables.expressions import genex

    out = []
    for match in rule.matches:
        op = _NFT_CMP_EQ if match.equal else _NFT_CMP_NEQ
        if match.field == SADDR:
            network = ipaddress.ip_network(match.value)
            offset, length = _SADDR_AT[network.version]
            out += [
                genex("payload", {"dreg": 1, "base": _NFT_PAYLOAD_NETWORK_HEADER, "offset": offset, "len": length}),
                genex(
                    "bitwise",
                    {
                        "sreg": 1,
                        "dreg": 1,
                        "len": length,
                        "mask": _data(network.netmask.packed),
                        "xor": _data(b"\0" * length),
                    },
                ),
                genex("cmp", {"sreg": 1, "op": op, "data": _data(network.network_address.packed)}),
            ]
        else:
            key = _NFT_META_IIFNAME if match.field == IIFNAME else _NFT_META_OIFNAME
            out += [
                genex("meta", {"key": key, "dreg": 1}),
                genex("cmp", {"sreg": 1, "op": op, "data": _data(_ifname_bytes(str(match.value)))}),
            ]
    if rule.action == MASQUERADE:
        out.append(genex("masq", {}))
    elif rule.action == DROP:
        out.append(genex("immediate", {"dreg": 0, "data": _verdict(_NF_DROP)}))
    elif rule.action == JUMP_ISOLATION:
        out.append(genex("immediate", {"dreg": 0, "data": _verdict(_NFT_JUMP, ISOLATION_CHAIN)}))
    else:
        raise ValueError("unknown action %r" % (rule.action,))
    return out


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return bytes.fromhex(str(value).replace(":", ""))


_META_FIELDS = {
    "NFT_META_IIFNAME": IIFNAME,
    _NFT_META_IIFNAME: IIFNAME,
    "NFT_META_OIFNAME": OIFNAME,
    _NFT_META_OIFNAME: OIFNAME,
}


def parse_nft_rule(chain: str, expressions) -> Optional[Rule]:
    """The Rule a dumped rule of our table expresses; None for anything this module does not write."""
    matches = []
    field = None
    mask = None
    action = None
    for expr in expressions or []:
        name = expr.get_attr("NFTA_EXPR_NAME")
        data = expr.get_attr("NFTA_EXPR_DATA")
        if action is not None:
            return None  # nothing follows the verdict in our rules
        if name == "payload":
            at = (data.get_attr("NFTA_PAYLOAD_OFFSET"), data.get_attr("NFTA_PAYLOAD_LEN"))
            if at not in _SADDR_AT.values():
                return None
            field, mask = SADDR, None
        elif name == "bitwise":
            mask = _as_bytes(data.get_attr("NFTA_BITWISE_MASK").get_attr("NFTA_DATA_VALUE"))
        elif name == "meta":
            field = _META_FIELDS.get(data.get_attr("NFTA_META_KEY"))
            if field is None:
                return None
        elif name == "cmp":
            op = data.get_attr("NFTA_CMP_OP")
            equal = op in ("NFT_CMP_EQ", _NFT_CMP_EQ)
            if not equal and op not in ("NFT_CMP_NEQ", _NFT_CMP_NEQ):
                return None
            value = _as_bytes(data.get_attr("NFTA_CMP_DATA").get_attr("NFTA_DATA_VALUE"))
            if field == SADDR:
                if mask is None or len(value) not in (4, 16) or len(mask) != len(value):
                    return None
                prefix = bin(int.from_bytes(mask, "big")).count("1")
                try:
                    network = ipaddress.ip_network((ipaddress.ip_address(value), prefix))
                except ValueError:
                    return None
                matches.append(Match(SADDR, equal, network))
            elif field in (IIFNAME, OIFNAME):
                matches.append(Match(field, equal, value.rstrip(b"\0").decode("ascii", "replace")))
            else:
                return None
            field, mask = None, None
        elif name == "masq":
            action = MASQUERADE
        elif name == "immediate":
            verdict = data.get_attr("NFTA_IMMEDIATE_DATA").get_attr("NFTA_DATA_VERDICT")
            code = verdict.get_attr("NFTA_VERDICT_CODE")
            if code in ("NF_DROP", _NF_DROP):
                action = DROP
            elif code in ("NFT_JUMP", _NFT_JUMP) and verdict.get_attr("NFTA_VERDICT_CHAIN") == ISOLATION_CHAIN:
                action = JUMP_ISOLATION
            else:
                return None
        else:
            return None
    if action is None:
        return None
    return Rule(chain, tuple(matches), action)


def nft_current_rules(nft) -> List[Tuple[int, Rule | None, str]]:
    """(handle, parsed rule or None, chain) of every rule in our table."""
    found = []
    for rule in nft.get_rules():
        if rule.get_attr("NFTA_RULE_TABLE") != TABLE:
            continue
        chain = rule.get_attr("NFTA_RULE_CHAIN")
        found.append(
            (rule.get_attr("NFTA_RULE_HANDLE"), parse_nft_rule(chain, rule.get_attr("NFTA_RULE_EXPRESSIONS")), chain)
        )
    return found


def _nft_sync(rules: Sequence[Rule], family: int = 4) -> None:
    from pyroute2.nftables.main import NFTables

    nft = NFTables(nfgen_family=_NFPROTO_IPV6 if family == 6 else _NFPROTO_IPV4)
    try:
        tables = [t.get_attr("NFTA_TABLE_NAME") for t in nft.get_tables()]
        if not rules:
            if TABLE in tables:
                nft.table("del", name=TABLE)
            return
        if TABLE not in tables:
            nft.table("add", name=TABLE)
        chains = {c.get_attr("NFTA_CHAIN_NAME") for c in nft.get_chains() if c.get_attr("NFTA_CHAIN_TABLE") == TABLE}
        for name, spec in _NFT_CHAINS:
            if name not in chains:
                nft.chain("add", table=TABLE, name=name, **spec)
        current = nft_current_rules(nft)
        have = {parsed for _, parsed, _ in current if parsed is not None}
        for rule in rules:
            if rule not in have:
                nft.rule("add", table=TABLE, chain=rule.chain, expressions=[nft_expressions(rule)])
                have.add(rule)
        wanted, kept = set(rules), set()
        for handle, parsed, chain in current:  # stale or duplicate: only now, after the new ones are in
            if parsed in wanted and parsed not in kept:
                kept.add(parsed)
                continue
            nft.rule("del", table=TABLE, chain=chain, handle=handle)
    finally:
        nft.close()


def _nft_teardown(family: int = 4) -> None:
    _nft_sync([], family)


# -- iptables (legacy or nft-backed binary) ------------------------------------------------------------
# Our chains: (table, chain, built-in chain that jumps to it; None: jumped to from our own chain)
IPTABLES_CHAINS = {
    NAT_CHAIN: ("nat", "DOCKYARD-POSTROUTING", "POSTROUTING"),
    FORWARD_CHAIN: ("filter", "DOCKYARD-ISOLATION-1", "FORWARD"),
    ISOLATION_CHAIN: ("filter", "DOCKYARD-ISOLATION-2", None),
}
_IPT_FLAGS = {SADDR: "-s", IIFNAME: "-i", OIFNAME: "-o"}
_IPT_ORDER = {SADDR: 0, IIFNAME: 1, OIFNAME: 2}  # the order `iptables -S` prints them in
_IPT_TARGETS = {MASQUERADE: "MASQUERADE", DROP: "DROP", JUMP_ISOLATION: IPTABLES_CHAINS[ISOLATION_CHAIN][1]}


def iptables_spec(rule: Rule) -> List[str]:
    """`-A CHAIN <matches> -j TARGET`, as `iptables -S` prints it."""
    chain = IPTABLES_CHAINS[rule.chain][1]
    out = ["-A", chain]
    for match in sorted(rule.matches, key=lambda m: _IPT_ORDER[m.field]):
        if not match.equal:
            out.append("!")
        out += [_IPT_FLAGS[match.field], str(match.value)]
    return out + ["-j", _IPT_TARGETS[rule.action]]


def _run(binary, table, *args):
    return subprocess.run(
        [binary, "-w", "-t", table] + list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )


def _checked(binary, table, *args):
    proc = _run(binary, table, *args)
    if proc.returncode != 0:
        raise FirewallUnavailable("iptables -t %s %s failed: %s" % (table, " ".join(args), proc.stderr.strip()))
    return proc


def iptables_listed(binary, table, chain) -> List[str]:
    proc = _checked(binary, table, "-S", chain)
    return [line.strip() for line in proc.stdout.splitlines() if line.startswith("-A ")]


def iptables_sync(binary: str, rules: Sequence[Rule]) -> None:
    for table, chain, parent in IPTABLES_CHAINS.values():
        if _run(binary, table, "-S", chain).returncode != 0:
            _checked(binary, table, "-N", chain)
    wanted: Dict[str, List[List[str]]] = {}
    for rule in rules:
        wanted.setdefault(rule.chain, []).append(iptables_spec(rule))
    for key, (table, chain, _) in IPTABLES_CHAINS.items():
        specs = wanted.get(key, [])
        for spec in specs:
            if _run(binary, table, "-C", *spec[1:]).returncode != 0:
                _checked(binary, table, *spec)
        keep = {" ".join(spec) for spec in specs}
        seen = set()
        for line in iptables_listed(binary, table, chain):
            if line in keep and line not in seen:
                seen.add(line)
                continue
            _checked(binary, table, "-D", *line.split()[1:])
        for spec in specs:  # a rule printed differently than we spell it was deleted above: put it back
            if _run(binary, table, "-C", *spec[1:]).returncode != 0:
                _checked(binary, table, *spec)
    for table, chain, parent in IPTABLES_CHAINS.values():
        if parent and _run(binary, table, "-C", parent, "-j", chain).returncode != 0:
            _checked(binary, table, "-I", parent, "1", "-j", chain)
    # Rules of engines before the isolation chains: `-A POSTROUTING ... -m comment --comment dockyard`.
    for line in iptables_listed(binary, "nat", "POSTROUTING"):
        if "--comment dockyard" in line and line.endswith("-j MASQUERADE"):
            _run(binary, "nat", "-D", *line.split()[1:])


def iptables_teardown(binary: str) -> None:
    for table, chain, parent in IPTABLES_CHAINS.values():
        if parent:
            while _run(binary, table, "-C", parent, "-j", chain).returncode == 0:
                _checked(binary, table, "-D", parent, "-j", chain)
    for table, chain, _ in IPTABLES_CHAINS.values():
        _run(binary, table, "-F", chain)
    for table, chain, _ in IPTABLES_CHAINS.values():
        _run(binary, table, "-X", chain)


class Firewall:
    """Keeps the kernel's rules of one address family (4 or 6) for the engine's networks equal to the
    last setup() call."""

    def __init__(self, family: int = 4) -> None:
        self.family = family
        self.binary_name = "ip6tables" if family == 6 else "iptables"
        self.rules: List[Rule] = []
        self.method: Optional[str] = None  # "nftables" or "iptables" once set up

    def setup(self, rules: Sequence[Rule]) -> str:
        """Make the installed rules exactly `rules` (ruleset.engine_rules) -> the method used."""
        rules = list(dict.fromkeys(rules))
        try:
            _nft_sync(rules, self.family)
            self.method, self.rules = "nftables", rules
            return self.method
        except ImportError as exc:
            nft_error = "pyroute2 is missing (%s)" % exc
        except Exception as exc:  # NetlinkError, OSError: no nf_tables in this kernel/sandbox
            nft_error = "nftables: %s" % (exc,)
        log.info("nftables setup failed (%s); trying %s", nft_error, self.binary_name)
        binary = shutil.which(self.binary_name)
        if not binary:
            raise FirewallUnavailable(
                "outbound NAT and network isolation unavailable: install nftables (kernel nf_tables) or "
                "iptables (%s; no %s binary)" % (nft_error, self.binary_name)
            )
        try:
            iptables_sync(binary, rules)
        except (OSError, FirewallUnavailable) as exc:
            raise FirewallUnavailable(
                "outbound NAT and network isolation unavailable: %s; %s" % (nft_error, exc)
            ) from None
        self.method, self.rules = "iptables", rules
        return self.method

    def teardown(self) -> None:
        """Remove what setup() installed (best effort)."""
        try:
            if self.method == "nftables":
                _nft_teardown(self.family)
            elif self.method == "iptables":
                binary = shutil.which(self.binary_name)
                if binary:
                    iptables_teardown(binary)
        except Exception as exc:
            log.warning("removing the engine's firewall rules failed: %s", exc)
        self.method, self.rules = None, []
