"""NetworkManager: the networks (bridge, host, none, user-defined bridges) and each container's
endpoint on them.

The runtime calls connect() once the container's network namespace exists and before
the user process runs, port_proxies() inside the container's supervisor, and
disconnect() when the container stops or is removed. State lives under
data-root/network: networks and subnets (networks.json, see catalog.py), address leases
(ipam*.json), host-port reservations (ports.json) and endpoints (endpoints.json).
The manager owns the endpoint records; each endpoint's veth and addresses, and which endpoint carries the
default routes, are wiring.Wiring's; bridges, forwarding and firewall rules are hostsetup.HostNetworking's,
the `docker network` descriptions and create/rm are networks.Networks'.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import Dict, Iterable, List, Protocol  # List, Dict: the manager has a method named list

from dockyard.engine.errors import Forbidden, InvalidParameter, NotFound
from dockyard.engine.network import bridge, dns, portproxy, vendor
from dockyard.engine.network.attachments import (
    CONTAINER_MODE,
    DISCONNECTED,
    check_container_mode,
    requests_from_create,
)
from dockyard.engine.network.catalog import (
    DEFAULT_BRIDGE,
    BridgeNet,
    Catalog,
    Pool6,
    random_id,
)
from dockyard.engine.network.fsutil import read_json, write_json
from dockyard.engine.network.hostsetup import HostNetworking, NetworkError
from dockyard.engine.network.names import DnsUnavailable, NamesMixin
from dockyard.engine.network.netns import loopback_up, netns_path, run_in_netns
from dockyard.engine.network.networks import Networks
from dockyard.engine.network.ports import (
    PortAllocationError,
    PortAllocator,
    PortSpecError,
    ps_ports,
    requested_ports,
)
from dockyard.engine.network.ports import (
    validate as validate_ports,
)
from dockyard.engine.network.resolver import EmbeddedDns
from dockyard.engine.network.settings import network_settings
from dockyard.engine.network.wiring import Wiring

log = logging.getLogger("dockyard.engine")


def _bool_opt(opts, name, default):
    value = opts.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


class ContainerView(Protocol):
    """What the network reads of a container (the runtime's Container has these attributes; read-only,
    so its properties match)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> dict: ...

    @property
    def host_config(self) -> dict: ...


def _parts(container: ContainerView) -> tuple[str, str, dict, dict]:
    """(id, name without '/', config, host_config) of a container."""
    return container.id, container.name.lstrip("/"), container.config or {}, container.host_config or {}


def settings_ip(settings):
    """The container's address in NetworkSettings (user-defined networks leave the top level empty)."""
    if settings.get("IPAddress"):
        return settings["IPAddress"]
    for ep in (settings.get("Networks") or {}).values():
        if ep and ep.get("IPAddress"):
            return ep["IPAddress"]
    return ""


class NetworkManager(NamesMixin):
    """Owns the bridges, NAT, address leases, host-port reservations and endpoint records."""

    def __init__(self, data_root: str, opts: dict[str, str] | None = None, warnings: List[str] | None = None) -> None:
        opts = dict(opts or {})
        self.dir = os.path.join(data_root, "network")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        device = opts.get("bridge") or DEFAULT_BRIDGE
        if len(device) > 15:
            raise ValueError("bridge name %r is longer than 15 characters" % device)
        self.mtu = int(opts["mtu"]) if opts.get("mtu") else None
        self.ip_masq = _bool_opt(opts, "ip-masq", True)
        self.ip_forward = _bool_opt(opts, "ip-forward", True)
        self.icc_default = _bool_opt(opts, "icc", True)  # dockerd --icc: the default bridge's enable_icc
        self.dns_fallback = tuple(s for s in (opts.get("dns") or "").split(",") if s) or dns.DEFAULT_NAMESERVERS
        self.explicit_bip = opts.get("bip") or None
        self.warnings = warnings if warnings is not None else []
        # dockerd's --ipv6 --fixed-cidr-v6 for the default bridge (user networks take --ipv6 at create)
        fixed_cidr_v6 = opts.get("fixed-cidr-v6") or None
        if _bool_opt(opts, "ipv6", False) != bool(fixed_cidr_v6):
            raise ValueError("IPv6 on the default bridge needs both ipv6=true and fixed-cidr-v6=<IPv6 CIDR>")
        self.catalog = Catalog(self.dir, device, self.explicit_bip, fixed_cidr_v6)
        self._lock = threading.RLock()
        self.host = HostNetworking(
            self.dir,
            self.catalog,
            self._lock,
            self.warnings,
            mtu=self.mtu,
            ip_masq=self.ip_masq,
            ip_forward=self.ip_forward,
            icc_default=self.icc_default,
            explicit_bip=self.explicit_bip,
        )
        self.wiring = Wiring(self.dir, self.catalog, self.host, self.mtu)
        self.networks = Networks(self.catalog, self.host, self._lock, self._endpoint_items, self.in_use)
        self._endpoints_path = os.path.join(self.dir, "endpoints.json")
        self.ports = PortAllocator(os.path.join(self.dir, "ports.json"))
        # {container id: {network name: endpoint}}; an older engine kept one endpoint per container.
        self.resolver = EmbeddedDns(self._dns_lookup, self._dns_upstreams)
        self.endpoints = {
            cid: ({value["Network"]: value} if "Network" in value else value)
            for cid, value in (read_json(self._endpoints_path, {}) or {}).items()
            if isinstance(value, dict)
        }

    def _save_endpoints(self):
        write_json(self._endpoints_path, self.endpoints)

    # The default bridge, for callers and tests that only know that one.
    @property
    def ipam(self):
        return self.catalog.default.ipam

    def network_name(self, host_config: dict | None) -> str:
        """The network a HostConfig asks for: 'bridge', 'host', 'none' or a user-defined network's name."""
        mode = ((host_config or {}).get("NetworkMode") or "default").strip()
        if mode in ("default", "bridge"):
            return "bridge"
        if mode in ("host", "none"):
            return mode
        if mode.startswith("container:"):
            return CONTAINER_MODE  # another container's netns: the runtime joins it, nothing to wire here
        try:
            return self.catalog.resolve(mode)
        except NotFound:
            # 400, not moby's 404: the docker CLI answers any 404 from create by pulling the image.
            raise InvalidParameter("network %s not found" % mode) from None

    def network_mode(self, host_config: dict | None) -> str:
        """'bridge' (any bridged network), 'host', 'none' or 'container'; InvalidParameter for unknown networks."""
        name = self.network_name(host_config)
        return name if name in ("host", "none", CONTAINER_MODE) else "bridge"

    @property
    def subnet(self):
        return self.catalog.default.subnet

    @property
    def gateway(self):
        return self.catalog.default.gateway

    @property
    def bridge_name(self):
        return self.catalog.default.device

    @property
    def nat_method(self) -> str | None:
        """ "nftables" or "iptables": how masquerading and isolation are installed (None: not at all)."""
        return self.host.nat_method

    # -- bridges, forwarding, NAT: on first use (hostsetup.py) -------------------------------
    def ensure_ready(self, net: BridgeNet | None = None) -> None:
        """Create the network's bridge; forwarding and NAT for all bridged networks (idempotent)."""
        self.host.ensure_ready(net)

    def icc(self, net: BridgeNet) -> bool:
        """Whether containers of `net` may talk to each other (enable_icc; Docker's default: yes)."""
        return self.host.icc(net)

    # -- container endpoints ---------------------------------------------------------------
    def validate(self, host_config: dict, config: dict, networking_config: dict | None = None) -> Dict[str, dict]:
        """Checks for container create: unknown networks, aliases/addresses where Docker refuses them,
        bad port bindings (400). -> the endpoint requests by network name (the record's NetworkAttachments)."""
        primary = self.network_name(host_config)
        if primary == CONTAINER_MODE:
            check_container_mode(host_config, config)
            return {CONTAINER_MODE: {}}
        try:
            validate_ports(host_config, config)
        except PortSpecError as exc:
            raise InvalidParameter(str(exc)) from None
        requests = requests_from_create(
            primary, networking_config, self._resolve_for_create, (config or {}).get("MacAddress") or ""
        )
        for netname, request in requests.items():
            self.check_request(netname, request)
        return requests

    def check_request(self, netname: str, request: dict) -> None:
        """An endpoint request the network can never meet (400): a fixed IPv6 address (--ip6) on a
        network without IPv6, or outside its IPv6 subnet."""
        ip6 = (request or {}).get("IPv6Address")
        if not ip6:
            return
        net = self.catalog.bridge_net(netname)
        if net is None or net.subnet6 is None:
            raise InvalidParameter(
                "invalid address %s: network %s has no IPv6 subnet (create it with --ipv6)" % (ip6, netname)
            )
        if ipaddress.IPv6Address(ip6) not in net.subnet6:
            # dockerd's words, and the subnet it meant
            raise InvalidParameter(
                "Invalid address %s: It does not belong to any of this network's subnets (%s)" % (ip6, net.subnet6)
            )

    def _resolve_for_create(self, ref):
        try:
            return self.catalog.resolve(ref)
        except NotFound:
            raise InvalidParameter("network %s not found" % ref) from None  # 400: see network_name

    def attachments(self, container: ContainerView, fallback: bool = True) -> Dict[str, dict]:
        """The networks the container is to be on, its primary (NetworkMode) first, with its requests;
        networks removed since are left out. A primary network it was disconnected from (`docker network
        disconnect`, as docker-compose does before connecting it again with its aliases) is left out
        too, unless no other network is left: then the container rejoins its NetworkMode."""
        _, _, _, host_config = _parts(container)
        primary = self.network_name(host_config)
        wanted = dict((getattr(container, "record", None) or {}).get("NetworkAttachments") or {})
        first = dict(wanted.pop(primary, None) or {})
        out = {} if first.get(DISCONNECTED) else {primary: first}
        for netname, request in wanted.items():
            if self.catalog.bridge_net(netname) is not None and not (request or {}).get(DISCONNECTED):
                out[netname] = dict(request or {})
        return out or ({primary: {}} if fallback else {})

    def connect(self, container: ContainerView, pid: int) -> dict:
        """Attach the container (its netns: /proc/<pid>/ns/net) to its networks -> NetworkSettings."""
        cid, name, config, host_config = _parts(container)
        wanted = self.attachments(container)
        netname = next(iter(wanted))
        if netname == CONTAINER_MODE:  # joined another container's netns: nothing of its own
            return network_settings(self.catalog, {}, config, host_config)
        if netname in ("host", "none"):
            if netname == "none":
                run_in_netns(netns_path(pid), loopback_up)
            endpoint = self.wiring.endpoint(cid, name, netname, None, [], pid, {})
            with self._lock:
                self.endpoints[cid] = {netname: endpoint}
                self._save_endpoints()
            return network_settings(self.catalog, self.endpoints[cid], config, host_config)
        try:
            requests = requested_ports(host_config, config)
        except PortSpecError as exc:
            raise InvalidParameter(str(exc)) from None
        endpoint_id = random_id()
        try:
            bindings = self.ports.reserve(cid, requests)
        except PortAllocationError as exc:
            raise NetworkError(
                "driver failed programming external connectivity on endpoint "
                "%s (%s): %s" % (name or cid[:12], endpoint_id, exc)
            ) from None
        endpoints: Dict[str, dict] = {}
        gateway_net = self.wiring.gateway_network(wanted)
        try:
            for index, (each, request) in enumerate(wanted.items()):
                endpoints[each] = self.wiring.attach(
                    cid,
                    name,
                    each,
                    request,
                    pid,
                    index,
                    bindings if index == 0 else [],
                    endpoint_id,
                    default_route=each == gateway_net,
                )
                endpoint_id = None
        except BaseException:
            self.ports.release(cid)
            for each, endpoint in endpoints.items():
                self.wiring.detach(cid, each, endpoint)
            raise
        for each, endpoint in endpoints.items():
            self._name_endpoint(endpoint, each, cid, name, config, host_config)
        with self._lock:
            self.endpoints[cid] = endpoints
            self._save_endpoints()
        try:
            self._serve_dns(cid, pid)
        except BaseException:
            self.disconnect(container)
            raise
        return network_settings(self.catalog, endpoints, config, host_config)

    def connect_running(self, container: ContainerView, pid: int, netname: str, request: dict) -> dict:
        """`docker network connect` of a running container: one more interface -> its NetworkSettings."""
        cid, name, config, host_config = _parts(container)
        with self._lock:
            current = dict(self.endpoints.get(cid) or {})
            if netname in current:
                raise Forbidden("endpoint with name %s already exists in network %s" % (name, netname))
            if any(each in ("host", "none") for each in current):
                raise Forbidden("container cannot be disconnected from host network or connected to host network")
            used = {ep.get("Index", 0) for ep in current.values()}
            index = next(i for i in range(len(used) + 1) if i not in used)
            before = self.wiring.gateway_network(current)
            endpoint = self.wiring.attach(cid, name, netname, request, pid, index, [])
            self._name_endpoint(endpoint, netname, cid, name, config, host_config)
            current[netname] = endpoint
            self.endpoints[cid] = current
            self._save_endpoints()
            self.wiring.reroute(before, current)
        self._serve_dns(cid, pid)
        return network_settings(self.catalog, current, config, host_config)

    def disconnect_running(self, container: ContainerView, netname: str) -> dict:
        """`docker network disconnect` of a running container: its interface on `netname` goes."""
        cid, name, config, host_config = _parts(container)
        with self._lock:
            current = dict(self.endpoints.get(cid) or {})
            endpoint = current.pop(netname, None)
            if endpoint is None:
                raise Forbidden("container %s is not connected to network %s" % (cid, netname))
            if netname in ("host", "none"):
                raise Forbidden("container cannot be disconnected from host network or connected to host network")
            self.wiring.detach(cid, netname, endpoint)
            if endpoint.get("Bindings"):
                self.ports.release(cid)
            self.endpoints[cid] = current
            self._save_endpoints()
            self.wiring.reroute(self.wiring.gateway_network([*current, netname]), current)
        return network_settings(self.catalog, current, config, host_config)

    def stopped_settings(self, container: ContainerView) -> dict:
        """NetworkSettings for a created or exited container (no address, no ports)."""
        _, _, config, host_config = _parts(container)
        try:
            wanted = self.attachments(container)
        except InvalidParameter:  # its network was removed since
            wanted = {(host_config or {}).get("NetworkMode") or "bridge": {}}
        return network_settings(self.catalog, None, config, host_config, wanted=wanted)

    def port_proxies(self, settings: dict) -> List[portproxy.TcpProxy | portproxy.UdpProxy]:
        """Userland forwarders for the published ports in `settings` (start them in the supervisor)."""
        return portproxy.proxies_for(settings)

    def disconnect(self, container: ContainerView, settings: dict | None = None) -> None:
        """Free the container's addresses and ports and remove its veths (if its netns still exists)."""
        cid = _parts(container)[0]
        self.resolver.remove(cid)
        with self._lock:
            endpoints = self.endpoints.pop(cid, None)
            if endpoints is not None:
                self._save_endpoints()
        if endpoints is None and settings:
            # No record (an older engine's, or lost): the first link has the stable name.
            endpoints = {netname: {"HostIf": bridge.host_ifname(cid)} for netname in settings.get("Networks") or {}}
        for netname, endpoint in (endpoints or {}).items():
            if self.catalog.bridge_net(netname) is not None:
                self.wiring.delete_veth(
                    cid, endpoint.get("HostIf") or bridge.host_ifname(cid, endpoint.get("Index", 0))
                )
        self.ports.release(cid)
        for net in self.catalog.bridged():
            for ipam in net.ipams():
                ipam.release(cid)

    def reconcile(self, running_ids: Iterable[str]) -> List[str]:
        """After an engine (re)start: forget endpoints, leases and ports of containers not running."""
        running = set(running_ids)
        with self._lock:
            gone = [cid for cid in self.endpoints if cid not in running]
            for cid in gone:
                del self.endpoints[cid]
            if gone:
                self._save_endpoints()
        owners = set(gone) | set(self.ports.owners())
        for net in self.catalog.bridged():
            for ipam in net.ipams():
                owners |= set(ipam.allocations().values())
        for cid in owners - running:
            self.ports.release(cid)
            for net in self.catalog.bridged():
                for ipam in net.ipams():
                    ipam.release(cid)
        with self._lock:
            bridged = [n for eps in self.endpoints.values() for n in eps if self.catalog.bridge_net(n)]
        for cid in running:
            with self._lock:
                key = next((ep.get("SandboxKey") for ep in (self.endpoints.get(cid) or {}).values()), "")
            if key and key.startswith("/proc/"):
                try:
                    self._serve_dns(cid, int(key.split("/")[2]))
                except (DnsUnavailable, ValueError) as exc:
                    log.warning("container %s: %s", cid[:12], exc)
        if bridged:
            # Containers kept running through the restart: put their isolation and NAT back now
            # should the kernel's rules have been flushed meanwhile (a firewall reload), rather than
            # at the next container start.
            with self._lock:
                vendor.prepare(self.dir)
                self.host.sync_firewall()
        return gone

    # -- container files --------------------------------------------------------------------
    def resolv_conf(self, container: ContainerView) -> str:
        _, _, _, host_config = _parts(container)
        if any(self._named(n) for n in self.attachments(container)):
            return dns.embedded_resolv_conf(host_config)
        return dns.resolv_conf(host_config, self.network_mode(host_config), fallback=self.dns_fallback)

    def hosts_file(self, container: ContainerView, settings: dict | None = None) -> str:
        _, _, config, host_config = _parts(container)
        if settings is not None:
            net = next(iter((settings.get("Networks") or {}).values()), None) or {}
            settings = dict(
                settings,
                IPAddress=settings_ip(settings),
                Gateway=settings.get("Gateway") or net.get("Gateway", ""),
                GlobalIPv6Address=settings.get("GlobalIPv6Address") or net.get("GlobalIPv6Address", ""),
            )
        # --link on the default bridge: the runtime's "alias:ip" entries for the linked containers
        link_hosts = (getattr(container, "record", None) or {}).get("LinkHosts") or []
        extra = list(host_config.get("ExtraHosts") or ()) + list(link_hosts)
        return dns.hosts_file(config.get("Hostname") or "", settings, config.get("Domainname") or "", extra)

    @staticmethod
    def ps_ports(settings: dict, config: dict | None = None) -> List[dict]:
        return ps_ports(settings, config)

    # -- the networks API (networks.py) ----------------------------------------------------
    def _endpoint_items(self):
        with self._lock:
            return list(self.endpoints.items())

    def list(self) -> List[dict]:
        return self.networks.list()

    def resolve(self, ref: str) -> str:
        """Network name for a name, full ID or unique ID prefix; NotFound otherwise."""
        return self.networks.resolve(ref)

    def inspect(self, ref: str) -> dict:
        return self.networks.inspect(ref)

    def in_use(self, name: str) -> List[str]:
        with self._lock:
            return [cid for cid, endpoints in self.endpoints.items() if name in endpoints]

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
        """A user-defined bridge network (`docker network create`); its bridge comes up now. ipv6: the
        IPv6 pool of a dual-stack network (--ipv6), None for IPv4 only."""
        return self.networks.create_network(
            name, subnet, gateway, internal, labels, options, ip_range, aux_addresses, ipv6
        )

    def remove_network(self, ref: str) -> str:
        """`docker network rm`: built-in networks and networks with containers are refused."""
        return self.networks.remove_network(ref)
