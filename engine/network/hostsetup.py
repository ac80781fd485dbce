"""The host side of bridged networking: each network's bridge device, IPv4 (and, once a network has
IPv6, IPv6) forwarding, the firewall (outbound NAT and isolation between networks, for IPv6 the same
rules in the ip6 family), the default bridge's subnet when its usual one is taken, and whether
containers of a network may talk to each other (enable_icc)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import List

from dockyard.engine.errors import InvalidParameter, SystemFailure
from dockyard.engine.network import bridge, nat, ruleset, vendor
from dockyard.engine.network.catalog import DEFAULT_POOLS, BridgeNet, Catalog

log = logging.getLogger("dockyard.engine")


class NetworkError(SystemFailure):
    """Connecting a container failed; the message is what `docker start` prints."""


ICC_OPTION = "com.docker.network.bridge.enable_icc"
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_GO_BOOLS.update({"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False})


def parse_go_bool(option: str, value: str) -> bool:
    """A network option's bool as moby reads it (strconv.ParseBool), with moby's error."""
    try:
        return _GO_BOOLS[value]
    except (KeyError, TypeError):
        raise InvalidParameter(
            'failed to parse %s value: %s (strconv.ParseBool: parsing "%s": invalid syntax)' % (option, value, value)
        ) from None


class HostNetworking:
    """Brings bridges, forwarding and firewall rules up on first use and keeps the rules in step with
    the catalog's bridged networks (after network create/remove, after an engine restart)."""

    def __init__(
        self,
        data_dir: str,
        catalog: Catalog,
        lock: threading.RLock,
        warnings: List[str],
        *,
        mtu: int | None,
        ip_masq: bool,
        ip_forward: bool,
        icc_default: bool,
        explicit_bip: str | None,
    ) -> None:
        self.dir = data_dir  # data-root/network: where the vendored netlink library is prepared
        self.catalog = catalog
        self.lock = lock  # the NetworkManager's: network create/remove hold it around ensure_ready
        self.warnings = warnings  # the engine's /info warnings
        self.mtu = mtu
        self.ip_masq = ip_masq
        self.ip_forward = ip_forward
        self.icc_default = icc_default  # dockerd --icc: the default bridge's enable_icc
        self.explicit_bip = explicit_bip
        self.firewall: nat.Firewall | None = None
        self.firewall6: nat.Firewall | None = None  # the IPv6 rules, from the first IPv6 network on
        self.nat_method: str | None = None  # "nftables" or "iptables": how masquerading and isolation are installed
        self.host_ready = False
        self.ipv6_forwarding = False

    def own_devices(self) -> List[str]:
        """The bridge devices of this engine's networks."""
        return [net.device for net in self.catalog.bridged()]

    # -- bridges, forwarding, NAT: on first use (and after network create/remove) ------------
    def ensure_ready(self, net: BridgeNet | None = None) -> None:
        """Create the network's bridge; forwarding and NAT for all bridged networks (idempotent)."""
        net = net or self.catalog.default
        with self.lock:
            if net.ready and self.host_ready:
                return
            vendor.prepare(self.dir)
            if net.default:
                self._pick_default_subnet()
                net = self.catalog.default
            try:
                bridge.ensure_bridge(
                    net.device,
                    net.gateway,
                    net.subnet.prefixlen,
                    self.mtu,
                    net.gateway6,
                    net.subnet6.prefixlen if net.subnet6 else None,
                )
            except bridge.BridgeError as exc:
                raise NetworkError(str(exc)) from None
            net.ready = True
            if net.ipv6 and self.ip_forward and not self.ipv6_forwarding:
                try:
                    nat.enable_ip_forward(nat.IPV6_FORWARD)  # as dockerd does for an IPv6 bridge
                    self.ipv6_forwarding = True
                except OSError as exc:
                    self._warn(
                        "IPv6 forwarding is disabled and cannot be enabled (%s): "
                        "IPv6 containers cannot reach other hosts" % exc
                    )
            if not self.host_ready:
                if self.ip_forward:
                    try:
                        nat.enable_ip_forward()
                    except OSError as exc:
                        self._warn(
                            "IPv4 forwarding is disabled and cannot be enabled (%s): "
                            "containers cannot reach other hosts" % exc
                        )
                self.host_ready = True
            self.sync_firewall()
            log.info(
                "bridge %s %s/%d up for network %s, outbound NAT and isolation via %s",
                net.device,
                net.gateway,
                net.subnet.prefixlen,
                net.name,
                self.nat_method or "none",
            )

    def sync_firewall(self) -> None:
        """Masquerading (unless ip-masq=false) and isolation for every bridged network of the catalog,
        whether or not its bridge is up in this engine process (the rules name devices)."""
        if self.firewall is None:
            self.firewall = nat.Firewall()
        bridged = self.catalog.bridged()
        networks = [ruleset.BridgedNetwork(net.device, net.subnet, net.internal) for net in bridged]
        try:
            self.nat_method = self.firewall.setup(ruleset.engine_rules(networks, masquerade=self.ip_masq))
        except nat.FirewallUnavailable as exc:
            self.nat_method = None
            self._warn(str(exc))
        # IPv6: the same ruleset over every bridge (isolation), masquerading the IPv6 subnets; kept away
        # (no ip6 table at all) while no network has IPv6, or until one had in this engine process
        six = [ruleset.BridgedNetwork(net.device, net.subnet6, net.internal) for net in bridged if net.subnet6]
        if not six and self.firewall6 is None:
            return
        if self.firewall6 is None:
            self.firewall6 = nat.Firewall(family=6)
        others = [ruleset.BridgedNetwork(net.device, None, net.internal) for net in bridged if not net.subnet6]
        rules6 = ruleset.engine_rules(six + others, masquerade=self.ip_masq) if six else []
        try:
            self.firewall6.setup(rules6)
        except nat.FirewallUnavailable as exc:
            self._warn("IPv6: %s" % exc)

    def icc(self, net: BridgeNet) -> bool:
        """Whether containers of `net` may talk to each other (enable_icc; Docker's default: yes)."""
        if net.default:
            return self.icc_default
        value = net.options.get(ICC_OPTION)
        return True if value is None else parse_go_bool(ICC_OPTION, value)

    def _warn(self, text):
        log.warning("%s", text)
        if text not in self.warnings:
            self.warnings.append(text)

    def _pick_default_subnet(self):
        net = self.catalog.default
        if net.ready:
            return
        clash = bridge.overlapping_routes(net.subnet, self.own_devices())
        if not clash:
            return
        if self.explicit_bip:
            raise NetworkError(
                "bip=%s overlaps routes of this host (%s): choose another subnet "
                "with --engine-opt bip=" % (self.explicit_bip, ", ".join(clash))
            )
        if net.ipam.allocations():
            raise NetworkError("bridge subnet %s now overlaps %s" % (net.subnet, ", ".join(clash)))
        taken = [n.subnet for n in self.catalog.bridged() if not n.default]
        for pool in DEFAULT_POOLS:
            iface = ipaddress.IPv4Interface(pool)
            if any(iface.network.overlaps(t) for t in taken):
                continue
            if not bridge.overlapping_routes(iface.network, self.own_devices()):
                log.info(
                    "bridge subnet %s is in use on this host (%s); using %s",
                    net.subnet,
                    ", ".join(clash),
                    iface.network,
                )
                self.catalog.set_default_subnet(iface)
                return
        raise NetworkError(
            "could not find an available, non-overlapping IPv4 address pool for "
            "the bridge: set one with --engine-opt bip="
        )


def device_exists(name: str) -> bool:
    """Whether a network device of that name exists in this network namespace."""
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False
