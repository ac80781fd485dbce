"""Address management for bridged networks (one Ipam per subnet, IPv4 or IPv6): allocations persisted
under data-root/network."""

import ipaddress
import logging
import threading

from dockyard.engine.network.fsutil import read_json, write_json

log = logging.getLogger("dockyard.engine")


class IpamError(Exception):
    """An address cannot be handed out (bad request, taken, or the pool is empty)."""


class PoolExhausted(IpamError):
    pass


class Ipam:
    """Hands out addresses of one subnet to owners (container IDs), one address per owner.

    Each allocation takes the lowest free address of the range, so a released address is handed out
    again at once, as dockerd 20.10 does (measured: with .2, .3, .4 leased, freeing .3 makes the next
    container .3). Every change is written to `path` before the call returns.
    """

    def __init__(self, path, subnet, gateway, ip_range=None, reserved=()):
        """ip_range (--ip-range): where addresses are handed out from (a fixed --ip may be anywhere in
        the subnet); reserved (--aux-address): addresses never given to a container."""
        self.path = path
        self.network = ipaddress.ip_network(subnet, strict=False)
        self.version = self.network.version
        self.gateway = self._address(gateway)
        self.range = ipaddress.ip_network(ip_range, strict=False) if ip_range else self.network
        self.reserved = frozenset(self._address(a) for a in reserved)
        if self.range.version != self.version or not self.range.subnet_of(self.network):  # type: ignore[arg-type]
            raise IpamError("ip-range %s is not in %s" % (self.range, self.network))
        if self.gateway not in self.network:
            raise IpamError("gateway %s is not in %s" % (self.gateway, self.network))
        if self.network.num_addresses < 4:
            raise IpamError("subnet %s is too small for containers" % self.network)
        self._lock = threading.Lock()
        self._by_ip = {}  # IPv4Address -> owner
        self._load()

    def _address(self, text):
        """An address of this subnet's family; ValueError otherwise."""
        ip = ipaddress.ip_address(str(text))
        if ip.version != self.version:
            raise ValueError("%s is not an IPv%d address" % (text, self.version))
        return ip

    # -- persistence -----------------------------------------------------------------
    def _load(self):
        raw = read_json(self.path, {}) or {}
        if raw.get("subnet") not in (None, str(self.network)):
            # The subnet was reconfigured (engine opt bip=): old leases mean nothing in the new one.
            log.warning(
                "bridge subnet changed from %s to %s: dropping %d old address leases",
                raw.get("subnet"),
                self.network,
                len(raw.get("allocations") or {}),
            )
            raw = {}
        for ip_text, owner in (raw.get("allocations") or {}).items():
            try:
                ip = self._address(ip_text)
            except ValueError:
                continue
            if self._assignable(ip):
                self._by_ip[ip] = owner

    def _save(self):
        write_json(
            self.path,
            {
                "subnet": str(self.network),
                "gateway": str(self.gateway),
                "allocations": {str(ip): owner for ip, owner in sorted(self._by_ip.items())},
            },
        )

    # -- queries -----------------------------------------------------------------------
    def _assignable(self, ip):
        # IPv6 has no broadcast; its subnet-router anycast address (the network address) stays out too
        return (
            ip in self.network
            and ip != self.network.network_address
            and (self.version == 6 or ip != self.network.broadcast_address)
            and ip != self.gateway
            and ip not in self.reserved
        )

    @property
    def prefixlen(self):
        return self.network.prefixlen

    def address_of(self, owner):
        with self._lock:
            for ip, who in self._by_ip.items():
                if who == owner:
                    return ip
        return None

    def owner_of(self, ip):
        with self._lock:
            return self._by_ip.get(ipaddress.ip_address(ip))

    def allocations(self):
        """{address text: owner} of every lease."""
        with self._lock:
            return {str(ip): owner for ip, owner in self._by_ip.items()}

    def capacity(self):
        """How many addresses the pool can hand out in total (network, broadcast, gateway excluded)."""
        return self.network.num_addresses - (3 if self.version == 4 else 2)

    # -- changes -----------------------------------------------------------------------
    def allocate(self, owner, preferred=None):
        """The owner's address, leasing one first if it has none. Raises IpamError/PoolExhausted."""
        with self._lock:
            for ip, who in self._by_ip.items():
                if who == owner:
                    return ip
            if preferred:
                try:
                    ip = self._address(preferred)
                except ValueError:
                    raise IpamError("invalid IPv%d address %r" % (self.version, preferred)) from None
                if not self._assignable(ip):
                    raise IpamError("address %s is not assignable in %s" % (ip, self.network))
                if ip in self._by_ip:
                    raise IpamError("Address already in use: %s" % ip)
            else:
                ip = self._next_free()
            self._by_ip[ip] = owner
            self._save()
            return ip

    def _next_free(self):
        first = max(int(self.range.network_address), int(self.network.network_address) + 1)
        top = int(self.network.broadcast_address) - (1 if self.version == 4 else 0)
        last = min(int(self.range.broadcast_address), top)
        span = last - first + 1
        # a bounded search: an IPv6 /64 is never walked through, the leases in it are few (of any
        # leases + reserved + 2 addresses from the start, one is free or the range is full)
        for step in range(min(span, len(self._by_ip) + len(self.reserved) + 2)):
            ip = ipaddress.ip_address(first + step)
            if self._assignable(ip) and ip not in self._by_ip:
                return ip
        raise PoolExhausted("no available IPv%d addresses on network bridge (%s)" % (self.version, self.network))

    def release(self, owner):
        """Free the owner's lease; returns the released address or None if it had none."""
        with self._lock:
            found = [ip for ip, who in self._by_ip.items() if who == owner]
            if not found:
                return None
            for ip in found:
                del self._by_ip[ip]
            self._save()
            return found[0]
