"""A container's NetworkSettings as moby's inspect shows them, from the engine's endpoint records."""

from __future__ import annotations

from dockyard.engine.network.catalog import Catalog
from dockyard.engine.network.ports import port_map


def endpoint_settings(catalog: Catalog, netname: str, endpoint: dict | None, aliases: list | None = None) -> dict:
    """One network's entry of NetworkSettings.Networks; endpoint None = not running (its requested aliases)."""
    ip = endpoint.get("IPAddress") if endpoint else ""
    net = catalog.bridge_net(netname)
    bridged = net is not None and bool(ip)
    aliases = list(endpoint.get("Aliases") or []) if endpoint else list(aliases or [])
    request_ip = (endpoint or {}).get("IPv4Request") or ""
    request_ip6 = (endpoint or {}).get("IPv6Request") or ""
    ip6 = (endpoint or {}).get("GlobalIPv6Address") or ""
    six = net is not None and net.subnet6 is not None and bool(ip6)
    ipam_config = {}
    if request_ip:
        ipam_config["IPv4Address"] = request_ip
    if request_ip6:
        ipam_config["IPv6Address"] = request_ip6
    named = net is not None and not net.default
    return {
        "IPAMConfig": ipam_config or None,
        "Links": None,
        "Aliases": aliases or None,
        "MacAddress": endpoint.get("MacAddress", "") if endpoint else "",
        "DriverOpts": None,
        "GwPriority": 0,
        "NetworkID": catalog.network_id(netname) or (endpoint or {}).get("NetworkID", ""),
        "EndpointID": endpoint.get("EndpointID", "") if endpoint else "",
        "Gateway": str(net.gateway) if bridged else "",
        "IPAddress": ip or "",
        "IPPrefixLen": net.subnet.prefixlen if bridged else 0,
        "IPv6Gateway": str(net.gateway6) if six and net is not None else "",
        "GlobalIPv6Address": ip6 if six else "",
        "GlobalIPv6PrefixLen": net.subnet6.prefixlen if six and net is not None and net.subnet6 else 0,
        "DNSNames": list(endpoint.get("DNSNames") or []) or None if named and endpoint else None,
    }


def network_settings(
    catalog: Catalog, endpoints: dict | None, config: dict, host_config: dict, wanted: dict | None = None
) -> dict:
    """NetworkSettings as moby's inspect shows it; endpoints None = not running (`wanted`: its networks)."""
    if endpoints is not None:
        networks = {netname: endpoint_settings(catalog, netname, ep) for netname, ep in endpoints.items()}
        primary = next(iter(endpoints.values()), None)
    else:
        networks = {
            netname: endpoint_settings(catalog, netname, None, (request or {}).get("Aliases"))
            for netname, request in (wanted or {}).items()
        }
        primary = None
    mode = (host_config or {}).get("NetworkMode") or "bridge"
    if mode.startswith("container:"):
        networks = {}  # as dockerd: the networks are the other container's
    elif not networks:
        networks = {mode: endpoint_settings(catalog, mode, None)}
    ports = {}
    if primary is not None and catalog.bridge_net(primary.get("Network") or "") is not None:
        ports = port_map(primary.get("Bindings") or [], config, host_config)
    # The deprecated top-level copies are filled for the default bridge network only.
    top = networks["bridge"] if "bridge" in networks else endpoint_settings(catalog, "", None)
    return {
        "Bridge": "",
        "SandboxID": primary.get("SandboxID", "") if primary else "",
        "SandboxKey": primary.get("SandboxKey", "") if primary else "",
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports,
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": top["EndpointID"],
        "Gateway": top["Gateway"],
        "GlobalIPv6Address": top["GlobalIPv6Address"],
        "GlobalIPv6PrefixLen": top["GlobalIPv6PrefixLen"],
        "IPAddress": top["IPAddress"],
        "IPPrefixLen": top["IPPrefixLen"],
        "IPv6Gateway": top["IPv6Gateway"],
        "MacAddress": top["MacAddress"],
        "Networks": networks,
    }


def network_members(catalog: Catalog, netname: str, endpoint_items: list) -> dict:
    """`docker network inspect`'s Containers: {container id: its endpoint on `netname`}."""
    net = catalog.bridge_net(netname)
    out = {}
    for cid, endpoints in endpoint_items:
        ep = endpoints.get(netname)
        if ep is None:
            continue
        ip = ep.get("IPAddress") or ""
        ip6 = ep.get("GlobalIPv6Address") or ""
        out[cid] = {
            "Name": ep.get("Name", ""),
            "EndpointID": ep.get("EndpointID", ""),
            "MacAddress": ep.get("MacAddress", ""),
            "IPv4Address": "%s/%d" % (ip, net.subnet.prefixlen) if ip and net else "",
            "IPv6Address": "%s/%d" % (ip6, net.subnet6.prefixlen) if ip6 and net and net.subnet6 else "",
        }
    return out
