"""Names on user-defined networks: what each endpoint is called, and the embedded resolver's view of
them (NetworkManager mixes this in; the resolver itself is resolver.py)."""

from __future__ import annotations

import threading
from typing import Dict, List, Tuple

from dockyard.engine.errors import SystemFailure
from dockyard.engine.network import dns
from dockyard.engine.network.catalog import Catalog
from dockyard.engine.network.netns import netns_path
from dockyard.engine.network.resolver import EmbeddedDns

COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


class DnsUnavailable(SystemFailure):
    """The embedded DNS server could not be opened in the container."""


class NamesMixin:
    """Needs `catalog`, `endpoints` ({container id: {network: endpoint}}), `_lock`, `resolver`, `dns_fallback`."""

    catalog: Catalog
    endpoints: Dict[str, Dict[str, dict]]
    _lock: threading.RLock
    resolver: EmbeddedDns
    dns_fallback: Tuple[str, ...]

    def _named(self, netname):
        """Whether containers find each other by name on `netname` (user-defined bridges only)."""
        net = self.catalog.bridge_net(netname)
        return net is not None and not net.default

    def _name_endpoint(self, endpoint, netname, cid, name, config, host_config):
        """The names other containers of a user-defined network resolve to this endpoint, and where the
        container's own lookups of other names go."""
        if not self._named(netname):
            return
        names = [name, cid[:12]] + list(endpoint.get("Aliases") or [])
        service = (config.get("Labels") or {}).get(COMPOSE_SERVICE_LABEL)
        if service:
            names.append(service)
        endpoint["DNSNames"] = list(dict.fromkeys(n for n in names if n))
        # --link NAME:ALIAS on a user-defined network: ALIAS is a name of NAME for this container only
        link_names = {}
        for entry in host_config.get("Links") or ():
            target, sep, alias = str(entry).partition(":")
            target = target.lstrip("/")
            alias = alias.rsplit("/", 1)[-1] if sep else target
            if target and alias:
                link_names[alias.lower()] = target.lower()
        if link_names:
            endpoint["LinkNames"] = link_names
        endpoint["Upstreams"] = dns.upstream_servers(host_config, fallback=self.dns_fallback)

    def _serve_dns(self, cid, pid):
        """Open the embedded resolver in the container once it is on a user-defined network."""
        with self._lock:
            named = any(self._named(n) for n in self.endpoints.get(cid) or {})
        if not named or self.resolver.serving(cid):
            return
        try:
            self.resolver.add(cid, netns_path(pid))
        except OSError as exc:
            raise DnsUnavailable("cannot start the embedded DNS server at 127.0.0.11: %s" % exc) from None

    def _dns_lookup(self, cid: str, qname: str) -> Tuple[List[str], bool]:
        """(addresses, known) of `qname` for container `cid` (IPv4 and IPv6 ones): the containers sharing one of its
        user-defined networks by name, short ID, alias or compose service (also as NAME.NETWORK)."""
        qname = qname.rstrip(".").lower()
        found, known = [], False
        with self._lock:
            own = self.endpoints.get(cid) or {}
            mine = [n for n in own if self._named(n)]
            for netname in mine:
                wanted = {qname}
                linked = (own[netname].get("LinkNames") or {}).get(qname)
                if linked:
                    wanted.add(linked)
                suffix = "." + netname.lower()
                if qname.endswith(suffix):
                    wanted.add(qname[: -len(suffix)])
                for endpoints in self.endpoints.values():
                    ep = endpoints.get(netname)
                    if ep and wanted & {n.lower() for n in ep.get("DNSNames") or ()}:
                        known = True
                        if ep.get("IPAddress"):
                            found.append(ep["IPAddress"])
                        if ep.get("GlobalIPv6Address"):  # AAAA answers on dual-stack networks
                            found.append(ep["GlobalIPv6Address"])
        return list(dict.fromkeys(found)), known

    def _dns_upstreams(self, cid: str) -> List[str]:
        """Forwarding targets for container `cid`; none when all its networks are --internal."""
        with self._lock:
            endpoints = dict(self.endpoints.get(cid) or {})
        nets = [self.catalog.bridge_net(n) for n in endpoints]
        if not any(net is not None and not net.internal for net in nets):
            return []
        for ep in endpoints.values():
            if ep.get("Upstreams"):
                return list(ep["Upstreams"])
        return dns.upstream_servers(fallback=self.dns_fallback)
