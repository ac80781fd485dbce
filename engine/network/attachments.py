"""What a container asks of its networks: the create request's NetworkingConfig.EndpointsConfig and
later `docker network connect`s, as {network name: {"Aliases": [...], "IPv4Address": "...",
"IPv6Address": "..."}}.

The runtime keeps this in the container's record (NetworkAttachments) so a stopped container
remembers the networks it was connected to; NetworkManager.connect() attaches them all at start.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Dict

from dockyard.engine.errors import InvalidParameter

# The request of a primary network the container was disconnected from (NetworkManager.attachments).
DISCONNECTED = "Disconnected"
# --network container:<id>: the container joins another's network namespace (the runtime does it).
CONTAINER_MODE = "container"
# Networks on which names mean nothing to Docker (no aliases, no fixed addresses).
NAMELESS = ("bridge", "host", "none", CONTAINER_MODE)
ALIAS_MAX = 255  # a DNS name


def endpoint_request(netname: str, endpoint: dict | None) -> dict:
    """{"Aliases", "IPv4Address", "IPv6Address", "MacAddress"} from one EndpointSettings, with dockerd's
    errors for what a built-in network cannot have."""
    endpoint = endpoint or {}
    aliases = [str(a) for a in (endpoint.get("Aliases") or []) if a]
    for alias in aliases:
        if len(alias) > ALIAS_MAX or any(ch.isspace() for ch in alias) or "/" in alias:
            raise InvalidParameter("invalid alias %r" % alias)
    ip = ((endpoint.get("IPAMConfig") or {}).get("IPv4Address") or "").strip()
    if ip:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise InvalidParameter("invalid IPv4 address: %s" % ip) from None
    ip6 = ((endpoint.get("IPAMConfig") or {}).get("IPv6Address") or "").strip()
    if ip6:
        try:
            ip6 = str(ipaddress.IPv6Address(ip6))
        except ValueError:
            raise InvalidParameter("invalid IPv6 address: %s" % ip6) from None
    mac = (endpoint.get("MacAddress") or "").strip()
    if mac:
        mac = parse_mac(mac)
        if netname in ("host", "none", CONTAINER_MODE):
            raise InvalidParameter("conflicting options: mac-address and the network mode")
    if netname in NAMELESS:
        if ip or ip6:
            raise InvalidParameter("user specified IP address is supported on user defined networks only")
        if aliases:
            raise InvalidParameter("network-scoped alias is supported only for containers in user defined networks")
    out: dict = {}
    if aliases:
        out["Aliases"] = list(dict.fromkeys(aliases))
    if ip:
        out["IPv4Address"] = ip
    if ip6:
        out["IPv6Address"] = ip6
    if mac:
        out["MacAddress"] = mac
    return out


_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def parse_mac(text: str) -> str:
    """A 48-bit unicast MAC (aa:bb:cc:dd:ee:ff or with '-') in lower case with ':'; InvalidParameter
    otherwise (a multicast address would not work as an interface's)."""
    if not _MAC.match(text):
        raise InvalidParameter("invalid MAC address: %s" % text)
    mac = text.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise InvalidParameter("invalid MAC address: %s is a multicast address" % text)
    return mac


def requests_from_create(
    primary: str, networking_config: dict | None, resolve: Callable[[str], str], legacy_mac: str = ""
) -> Dict[str, dict]:
    """The create request's endpoints by network name, the primary network (NetworkMode) first.

    `resolve` turns a name or ID into a network name (InvalidParameter when unknown). Several
    networks at create (API >= 1.44, `docker run --network a --network b`) are kept; host/none
    cannot be combined with others."""
    configs = (networking_config or {}).get("EndpointsConfig") or {}
    out: Dict[str, dict] = {primary: {}}
    for key, endpoint in configs.items():
        netname = primary if key in ("default", primary) else resolve(key)
        out[netname] = endpoint_request(netname, endpoint)
    if legacy_mac and not out[primary].get("MacAddress"):  # Config.MacAddress of API < 1.44
        out[primary] = dict(out[primary], **endpoint_request(primary, {"MacAddress": legacy_mac}))
    if len(out) > 1 and (primary in ("host", "none") or "host" in out or "none" in out):
        raise InvalidParameter("Container cannot be connected to network endpoints: %s" % ", ".join(out))
    return out


def check_container_mode(host_config: dict, config: dict) -> None:
    """What dockerd refuses with --network container:<id> (runconfig's conflicting options): the
    network, hostname, DNS and hosts are the other container's."""
    if config.get("Hostname"):
        raise InvalidParameter("conflicting options: hostname and the network mode")
    if host_config.get("Dns") or host_config.get("DnsSearch") or host_config.get("DnsOptions"):
        raise InvalidParameter("conflicting options: dns and the network mode")
    if host_config.get("ExtraHosts"):
        raise InvalidParameter("conflicting options: custom host-to-IP mapping and the network mode")
    if host_config.get("PortBindings") or host_config.get("PublishAllPorts"):
        raise InvalidParameter("conflicting options: port publishing and the container type network mode")
    if host_config.get("Links"):
        raise InvalidParameter("conflicting options: container type network can't be used with links")
    if config.get("MacAddress"):
        raise InvalidParameter("conflicting options: mac-address and the network mode")
