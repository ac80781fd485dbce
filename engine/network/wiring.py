"""A container's links on bridged networks: the veth and addresses of each endpoint (attach/detach) and which
endpoint carries the container's default routes.

As dockerd 20.10 (libnetwork's gateway endpoint), one endpoint holds both default routes, IPv4 and IPv6 (the
latter only if that network is dual-stack): of the container's networks, non-internal ones before internal
ones, dual-stack ones before IPv4-only ones, then by network name. Whenever a connect or disconnect changes
that endpoint, both routes move to the new one (measured on Debian's dockerd 20.10: run --network nb then
connect na moves the routes to na; connect of a dual-stack network takes them; disconnect hands them to the
next in that order).
"""

from __future__ import annotations

import logging
import socket
from typing import Dict, Iterable, Optional, Tuple

from dockyard.engine.network import bridge, vendor
from dockyard.engine.network.catalog import BridgeNet, Catalog, random_id
from dockyard.engine.network.hostsetup import HostNetworking, NetworkError
from dockyard.engine.network.ipam import IpamError
from dockyard.engine.network.netns import netns_path

log = logging.getLogger("dockyard.engine")


def gateway_order(netname: str, net: BridgeNet) -> Tuple[bool, bool, str]:
    """Sort key of dockerd's gateway endpoint choice: the smallest gets the default routes."""
    return (net.internal, net.subnet6 is None, netname)


class Wiring:
    """Creates and removes a container's endpoints on bridged networks and keeps its default routes."""

    def __init__(self, data_dir: str, catalog: Catalog, host: HostNetworking, mtu: int | None) -> None:
        self.dir = data_dir
        self.catalog = catalog
        self.host = host
        self.mtu = mtu

    def gateway_network(self, netnames: Iterable[str]) -> Optional[str]:
        """Which of these networks gives the container its default routes (None: no bridged one)."""
        bridged = [(n, self.catalog.bridge_net(n)) for n in netnames]
        keyed = [gateway_order(n, net) for n, net in bridged if net is not None]
        return min(keyed)[2] if keyed else None

    def attach(self, cid, name, netname, request, pid, index, bindings, endpoint_id=None, default_route=False):
        """One veth from the network's bridge into the container's netns (eth<index>) -> the endpoint.
        default_route: this link takes the container's default routes (it has none yet)."""
        net = self.catalog.bridge_net(netname)
        if net is None:
            raise NetworkError("network %s not found" % netname)
        self.host.ensure_ready(net)
        try:
            ip = net.ipam.allocate(cid, request.get("IPv4Address") or None)
        except IpamError as exc:
            raise NetworkError(str(exc)) from None
        six = None
        if net.ipam6 is not None and net.subnet6 is not None:
            try:
                ip6 = net.ipam6.allocate(cid, request.get("IPv6Address") or None)
            except IpamError as exc:
                net.ipam.release(cid)
                raise NetworkError(str(exc)) from None
            six = (ip6, net.subnet6.prefixlen, net.gateway6)
        host_if = bridge.host_ifname(cid, index)
        try:
            bridge.attach_container(
                pid,
                net.device,
                host_if,
                ip,
                net.subnet.prefixlen,
                net.gateway,
                request.get("MacAddress") or bridge.mac_for(ip),
                self.mtu,
                isolated=not self.host.icc(net),
                ifname=bridge.container_ifname(index),
                default_route=default_route,
                six=six,
            )
        except bridge.BridgeError as exc:
            for ipam in net.ipams():
                ipam.release(cid)
            raise NetworkError(str(exc)) from None
        except BaseException:
            for ipam in net.ipams():
                ipam.release(cid)
            raise
        endpoint = self.endpoint(cid, name, netname, ip, bindings, pid, request, endpoint_id)
        if six is not None:
            endpoint.update({"GlobalIPv6Address": str(six[0]), "IPv6Request": request.get("IPv6Address") or ""})
        endpoint.update({"HostIf": host_if, "Index": index})
        return endpoint

    def detach(self, cid, netname, endpoint):
        """Undo attach: the veth (if its netns still exists) and the address leases."""
        net = self.catalog.bridge_net(netname)
        if endpoint.get("HostIf"):
            self.delete_veth(cid, endpoint["HostIf"])
        if net is not None:
            for ipam in net.ipams():
                ipam.release(cid)

    def endpoint(self, cid, name, netname, ip, bindings, pid, request, endpoint_id=None) -> dict:
        """The endpoint record (endpoints.json) of a container on one network."""
        return {
            "Network": netname,
            "NetworkID": self.catalog.network_id(netname),
            "Name": name,
            "EndpointID": endpoint_id or random_id(),
            "SandboxID": random_id(),
            "SandboxKey": netns_path(pid) if netname != "host" else "",
            "IPAddress": str(ip) if ip else "",
            "MacAddress": (request.get("MacAddress") or bridge.mac_for(ip)) if ip else "",
            "Bindings": bindings,
            "Aliases": list(request.get("Aliases") or []),
            "IPv4Request": request.get("IPv4Address") or "",
        }

    def reroute(self, before: Optional[str], endpoints: Dict[str, dict]) -> None:
        """After a connect or disconnect: if the gateway network is no longer `before`, both default routes
        go through the new one (its IPv6 route only if it is dual-stack; no IPv6 default route otherwise)."""
        after = self.gateway_network(endpoints)
        if after is None or after == before:
            return
        ep, net = endpoints[after], self.catalog.bridge_net(after)
        if net is None or not ep.get("SandboxKey"):
            return
        gateway6 = net.gateway6 if ep.get("GlobalIPv6Address") else None
        try:
            bridge.set_default_routes(
                ep["SandboxKey"], bridge.container_ifname(ep.get("Index", 0)), net.gateway, gateway6
            )
        except (bridge.BridgeError, OSError) as exc:  # the connect or disconnect itself is done
            log.warning("container %s: default routes not moved to %s: %s", ep.get("Name"), after, exc)

    def delete_veth(self, cid: str, name: str | None = None) -> None:
        """Delete the container's host-side veth if it is still there (it dies with the container's netns)."""
        name = name or bridge.host_ifname(cid)
        # only load netlink when it is still there (an ioctl on a socket of this netns; /sys may show
        # another netns' devices)
        try:
            socket.if_nametoindex(name)
        except OSError:
            return
        vendor.prepare(self.dir)
        try:
            bridge.delete_link(name)
        except bridge.BridgeError as exc:
            log.warning("%s", exc)
