"""The engine's packet-filter rules as data, for nat.py to install with nftables or iptables.

Two kinds, over every bridged network of the engine (the default bridge and user-defined ones):

- outbound masquerading: `ip saddr SUBNET oifname != BRIDGE masquerade` (not for internal networks);
- isolation, as Docker's DOCKER-ISOLATION-STAGE-1/2 chains: a packet that enters from one engine
  bridge and is routed out through another engine bridge is dropped
  (forward: `iifname A oifname != A jump stage-2`; stage-2: `oifname B drop` for every bridge B),
  and an internal network's traffic never crosses its bridge in either direction.

The same rules serve IPv6 (nat.py installs them in the ip6 family): isolation over every bridge,
masquerading for the IPv6 subnets of dual-stack networks.

Traffic between containers of one bridge is switched, not routed, so it never reaches these rules:
`com.docker.network.bridge.enable_icc=false` is enforced by bridge-port isolation (bridge.py).
Traffic to the host's own addresses (the gateways) is not forwarded either: like Docker, the
engine leaves container-to-host traffic alone.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, List, NamedTuple, Optional, Tuple, Union

NAT_CHAIN = "postrouting"
FORWARD_CHAIN = "forward"
ISOLATION_CHAIN = "isolation-stage-2"
CHAINS = (NAT_CHAIN, FORWARD_CHAIN, ISOLATION_CHAIN)

MASQUERADE = "masquerade"
DROP = "drop"
JUMP_ISOLATION = "jump " + ISOLATION_CHAIN
ACTIONS = (MASQUERADE, DROP, JUMP_ISOLATION)

SADDR, IIFNAME, OIFNAME = "saddr", "iifname", "oifname"


class Match(NamedTuple):
    """`field == value` (equal) or `field != value`; saddr values are IPv4/IPv6Networks, names are str."""

    field: str
    equal: bool
    value: Union[str, ipaddress.IPv4Network, ipaddress.IPv6Network]


class Rule(NamedTuple):
    chain: str
    matches: Tuple[Match, ...]
    action: str


class BridgedNetwork(NamedTuple):
    """What the rules need to know of one bridged network (subnet None: none of this family)."""

    device: str
    subnet: Optional[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]]
    internal: bool = False


def masquerade_rule(subnet: Union[ipaddress.IPv4Network, ipaddress.IPv6Network], device: str) -> Rule:
    return Rule(NAT_CHAIN, (Match(SADDR, True, subnet), Match(OIFNAME, False, device)), MASQUERADE)


def isolation_rules(networks: Iterable[BridgedNetwork]) -> List[Rule]:
    """Forwarding between two different engine bridges is dropped; internal networks stay inside."""
    rules = []
    networks = list(networks)
    for net in networks:
        leaving = (Match(IIFNAME, True, net.device), Match(OIFNAME, False, net.device))
        if net.internal:
            rules.append(Rule(FORWARD_CHAIN, leaving, DROP))
            entering = (Match(OIFNAME, True, net.device), Match(IIFNAME, False, net.device))
            rules.append(Rule(FORWARD_CHAIN, entering, DROP))
        else:
            rules.append(Rule(FORWARD_CHAIN, leaving, JUMP_ISOLATION))
    for net in networks:
        rules.append(Rule(ISOLATION_CHAIN, (Match(OIFNAME, True, net.device),), DROP))
    return rules


def engine_rules(networks: Iterable[BridgedNetwork], masquerade: bool = True) -> List[Rule]:
    """Every rule the engine wants for `networks`: masquerading (unless turned off) and isolation."""
    networks = list(networks)
    rules = []
    if masquerade:
        rules += [
            masquerade_rule(net.subnet, net.device) for net in networks if not net.internal and net.subnet is not None
        ]
    return rules + isolation_rules(networks)
