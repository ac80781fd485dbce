"""The networks as `docker network ls/inspect/create/rm` see them: their descriptions (Docker's
network JSON, members included), and creating and removing user-defined bridge networks."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Callable, List, Tuple  # List: the class has a method named list

from dockyard.engine.errors import Forbidden, InvalidParameter
from dockyard.engine.network import bridge, vendor
from dockyard.engine.network.catalog import BUILTIN, DRIVERS, BridgeNet, Catalog, Pool6
from dockyard.engine.network.hostsetup import ICC_OPTION, HostNetworking, device_exists, parse_go_bool
from dockyard.engine.network.settings import network_members

log = logging.getLogger("dockyard.engine")


class Networks:
    """The networks API over the catalog; the endpoints (who is on a network) stay the NetworkManager's."""

    def __init__(
        self,
        catalog: Catalog,
        host: HostNetworking,
        lock: threading.RLock,
        endpoint_items: Callable[[], List[Tuple[str, dict]]],
        in_use: Callable[[str], List[str]],
    ) -> None:
        self.catalog = catalog
        self.host = host
        self.lock = lock  # the NetworkManager's, shared with its endpoint records
        self.endpoint_items = endpoint_items  # [(container id, {network name: endpoint})]
        self.in_use = in_use  # the IDs of the containers on a network

    def describe(self, name: str, verbose: bool = True) -> dict:
        """Docker's JSON for a network; `verbose` adds its members."""
        net = self.catalog.bridge_net(name)
        if net is not None:
            ipam_config: List[dict] = [{"Subnet": str(net.subnet)}]
            if net.gateway_shown:
                ipam_config[0]["Gateway"] = str(net.gateway)
            if net.ip_range:
                ipam_config[0]["IPRange"] = net.ip_range
            if net.aux_addresses:
                ipam_config[0]["AuxiliaryAddresses"] = dict(net.aux_addresses)
            if net.subnet6 is not None:
                six: dict = {"Subnet": str(net.subnet6)}
                if net.gateway6_shown:
                    six["Gateway"] = str(net.gateway6)
                if net.ip_range6:
                    six["IPRange"] = net.ip_range6
                if net.aux_addresses6:
                    six["AuxiliaryAddresses"] = dict(net.aux_addresses6)
                ipam_config.append(six)
            if net.default:
                options = {
                    "com.docker.network.bridge.default_bridge": "true",
                    ICC_OPTION: "true" if self.host.icc_default else "false",
                    "com.docker.network.bridge.enable_ip_masquerade": "true" if self.host.ip_masq else "false",
                    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                    "com.docker.network.bridge.name": net.device,
                    "com.docker.network.driver.mtu": str(self.host.mtu or 1500),
                }
            else:
                options = dict(net.options)
            net_id, created, driver = net.id, net.created, "bridge"
            internal, labels = net.internal, dict(net.labels)
        else:
            meta = self.catalog.builtin[name]
            ipam_config, options, labels, internal = [], {}, {}, False
            net_id, created, driver = meta["Id"], meta["Created"], DRIVERS[name]
        return {
            "Name": name,
            "Id": net_id,
            "Created": created,
            "Scope": "local",
            "Driver": driver,
            "EnableIPv4": net is not None,
            "EnableIPv6": bool(net is not None and net.ipv6),
            "IPAM": {"Driver": "default", "Options": None if name in BUILTIN else {}, "Config": ipam_config},
            "Internal": internal,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": network_members(self.catalog, name, self.endpoint_items()) if verbose else {},
            "Options": options,
            "Labels": labels,
        }

    def list(self) -> List[dict]:
        return [self.describe(name, verbose=False) for name in self.catalog.names()]

    def resolve(self, ref: str) -> str:
        """Network name for a name, full ID or unique ID prefix; NotFound otherwise."""
        return self.catalog.resolve(ref)

    def inspect(self, ref: str) -> dict:
        return self.describe(self.resolve(ref))

    def create_network(
        self,
        name: str,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        ip_range: str | None = None,
        aux_addresses: dict[str, str] | None = None,
        ipv6: Pool6 | None = None,
    ) -> BridgeNet:
        """A user-defined bridge network (`docker network create`); its bridge comes up now."""
        with self.lock:
            vendor.prepare(self.host.dir)

            def routed(network):
                return bool(bridge.overlapping_routes(network, self.host.own_devices()))

            if ICC_OPTION in (options or {}):
                parse_go_bool(ICC_OPTION, (options or {})[ICC_OPTION])
            for each in (subnet, ipv6.subnet if ipv6 else None):
                try:
                    network = ipaddress.ip_network(each, strict=False) if each else None
                except ValueError:
                    continue  # the catalog says what is wrong with it
                if network is not None and routed(network):
                    raise InvalidParameter("subnet %s overlaps routes of this host" % each)
            net = self.catalog.create(
                name, subnet, gateway, internal, labels, options, routed, ip_range, aux_addresses, ipv6
            )
            try:
                self.host.ensure_ready(net)
            except Exception:
                self.catalog.remove(name)
                raise
            return net

    def remove_network(self, ref: str) -> str:
        """`docker network rm`: built-in networks and networks with containers are refused."""
        with self.lock:
            name = self.resolve(ref)
            if name in BUILTIN:
                raise Forbidden("%s is a pre-defined network and cannot be removed" % name)
            users = self.in_use(name)
            if users:
                raise Forbidden(
                    "error while removing network: network %s id %s has active "
                    "endpoints" % (name, self.catalog.network_id(name))
                )
            net = self.catalog.remove(name)
            if net.ready or device_exists(net.device):
                vendor.prepare(self.host.dir)
                try:
                    bridge.delete_link(net.device)
                except bridge.BridgeError as exc:
                    log.warning("%s", exc)
            # Always, even before this engine process set any rule: the kernel keeps the rules
            # of an earlier engine process, and the removed network's must go now.
            vendor.prepare(self.host.dir)
            self.host.sync_firewall()
            return name
