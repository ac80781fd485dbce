"""The engine's networks: host, none, the default bridge and user-defined bridge networks.

Persisted in data-root/network/networks.json (IDs, creation times, subnets); each bridged
network keeps its address leases in its own IPAM file (and a second one for its IPv6 subnet when it
was created with --ipv6: dual stack, as dockerd's bridge networks).
"""

import binascii
import ipaddress
import os
import time
from typing import Dict, NamedTuple, Optional

from dockyard.engine.errors import Conflict, InvalidParameter, NotFound
from dockyard.engine.network.fsutil import read_json, write_json
from dockyard.engine.network.ipam import Ipam, IpamError

DEFAULT_BRIDGE = "dockyard0"
BUILTIN = ("bridge", "host", "none")
DRIVERS = {"bridge": "bridge", "host": "host", "none": "null"}
# Tried in order for the default bridge (when bip= is not set) and for user-defined networks,
# skipping subnets in use by another network or routed by the host.
DEFAULT_POOLS = tuple("172.%d.0.1/16" % n for n in range(17, 32)) + tuple(
    "192.168.%d.1/20" % n for n in range(0, 256, 16)
)


def random_id():
    return binascii.hexlify(os.urandom(32)).decode("ascii")


def now_rfc3339():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + (".%09dZ" % int((t % 1) * 1e9))


class BridgeNet:
    """One bridged network: its Linux bridge, subnet, gateway and address leases."""

    def __init__(self, directory, name, record, default=False):
        self.name = name
        self.default = default
        self.id = record["Id"]
        self.created = record["Created"]
        self.subnet = ipaddress.IPv4Network(record["Subnet"])
        self.gateway = ipaddress.IPv4Address(record["Gateway"])
        # IPAM.Config lists the gateway unless dockerd would not: a --subnet given without a --gateway
        self.gateway_shown = record.get("GatewayShown", True) is not False
        self.device = record["Device"]
        self.internal = bool(record.get("Internal"))
        self.labels = dict(record.get("Labels") or {})
        self.options = dict(record.get("Options") or {})
        ipam_file = "ipam.json" if default else "ipam-%s.json" % self.id[:12]
        self.ipam_path = os.path.join(directory, ipam_file)
        self.ip_range = record.get("IPRange") or None
        self.aux_addresses = dict(record.get("AuxAddresses") or {})
        self.ipam = Ipam(self.ipam_path, self.subnet, self.gateway, self.ip_range, self.aux_addresses.values())
        # IPv6 (docker network create --ipv6): a second subnet on the same bridge, its own leases
        self.ipv6 = bool(record.get("EnableIPv6"))
        self.subnet6 = ipaddress.IPv6Network(record["Subnet6"]) if self.ipv6 else None
        self.gateway6 = ipaddress.IPv6Address(record["Gateway6"]) if self.ipv6 else None
        self.gateway6_shown = record.get("Gateway6Shown", True) is not False
        self.ip_range6 = record.get("IPRange6") or None
        self.aux_addresses6 = dict(record.get("AuxAddresses6") or {})
        self.ipam6_path = os.path.join(directory, "ipam6-%s.json" % self.id[:12])
        self.ipam6 = (
            Ipam(self.ipam6_path, self.subnet6, self.gateway6, self.ip_range6, self.aux_addresses6.values())
            if self.ipv6
            else None
        )
        self.ready = False  # bridge device set up by this engine process

    def ipams(self):
        """The network's address pools: IPv4, then IPv6 when enabled."""
        return [self.ipam] + ([self.ipam6] if self.ipam6 is not None else [])

    def record(self):
        return {
            "Id": self.id,
            "Created": self.created,
            "Subnet": str(self.subnet),
            "Gateway": str(self.gateway),
            "GatewayShown": self.gateway_shown,
            "Device": self.device,
            "Internal": self.internal,
            "Labels": self.labels,
            "Options": self.options,
            "IPRange": self.ip_range,
            "AuxAddresses": self.aux_addresses,
            "EnableIPv6": self.ipv6,
            "Subnet6": str(self.subnet6) if self.subnet6 else None,
            "Gateway6": str(self.gateway6) if self.gateway6 else None,
            "Gateway6Shown": self.gateway6_shown,
            "IPRange6": self.ip_range6,
            "AuxAddresses6": self.aux_addresses6,
        }


def check_pool_extras(network, gateway, ip_range, aux):
    """--ip-range and --aux-address of a network create, with dockerd's errors -> (range text, aux map)."""
    version = network.version
    if ip_range:
        try:
            pool = ipaddress.ip_network(ip_range, strict=False)
        except ValueError:
            raise InvalidParameter("invalid ip-range %r" % ip_range) from None
        if pool.version != version or not pool.subnet_of(network):
            raise InvalidParameter("invalid pool request: ip-range %s is not within subnet %s" % (pool, network))
        ip_range = str(pool)
    checked = {}
    for name, addr in (aux or {}).items():
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise InvalidParameter("invalid auxiliary address %s=%r" % (name, addr)) from None
        broadcast = network.broadcast_address if version == 4 else None
        if ip.version != version or ip not in network or ip in (network.network_address, broadcast):
            raise InvalidParameter("auxiliary address: (%s:%s) must belong to the master pool %s" % (name, ip, network))
        if ip == gateway:  # dockerd allocates the gateway first, then the auxiliary addresses
            raise InvalidParameter(
                "failed to allocate secondary ip address (%s:%s): Address already in use" % (name, ip)
            )
        checked[str(name)] = str(ip)
    return ip_range or None, checked


class Pool6(NamedTuple):
    """The IPv6 half of a dual-stack network create (IPAM.Config's IPv6 entry; all empty: pick one)."""

    subnet: Optional[str] = None
    gateway: Optional[str] = None
    ip_range: Optional[str] = None
    aux_addresses: Optional[Dict[str, str]] = None


def first_host(network, ip_range=None):
    """The gateway dockerd 20.10 picks when none is given: the first address it can hand out, that of the
    --ip-range if there is one (10.86.0.0/24 with range 10.86.0.128/25: 10.86.0.128), else the subnet's
    first host address. A range that is not in the subnet is refused later (check_pool_extras)."""
    try:
        pool = ipaddress.ip_network(ip_range, strict=False) if ip_range else network
    except ValueError:
        pool = network
    if pool.version != network.version or not pool.subnet_of(network):
        pool = network
    return max(pool.network_address, network.network_address + 1)


def checked_subnet(subnet, gateway, version, taken, ip_range=None):
    """(network, gateway) of a --subnet/--gateway pair of one family, with dockerd's refusals: not a
    CIDR of that family, overlapping another network's subnet, a gateway outside it, too small. No
    gateway: the first address of ip_range (or of the subnet), as dockerd."""
    try:
        network = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise InvalidParameter("invalid subnet %r" % subnet) from None
    if network.version != version:
        raise InvalidParameter("invalid subnet %s: not an IPv%d CIDR" % (network, version))
    if any(network.overlaps(t) for t in taken if t.version == version):
        raise Conflict("invalid pool request: Pool overlaps with other one on this address space")
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise InvalidParameter("invalid gateway %r" % gateway) from None
    else:
        gw = first_host(network, ip_range)
    outside = {network.network_address} | ({network.broadcast_address} if version == 4 else set())
    if gw.version != version or gw not in network or gw in outside:
        raise InvalidParameter("gateway %s is not a host address of %s" % (gw, network))
    if network.num_addresses < 4:
        raise InvalidParameter("subnet %s is too small" % network)
    return network, gw


def pick_ula_subnet(taken, routed):
    """A /64 of a random unique local prefix (fd00::/8, RFC 4193) that no network uses and the host does
    not route: the IPv6 subnet of an --ipv6 network created without one (dockerd 20.10 would refuse)."""
    for _ in range(16):
        global_id = int.from_bytes(os.urandom(5), "big")
        network = ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64))
        if not any(network.overlaps(t) for t in taken if t.version == 6) and not routed(network):
            return network
    raise Conflict("could not find an available, non-overlapping IPv6 address pool to assign to the network")


def default_ipv6(cidr):
    """The default bridge's IPv6 fields for fixed-cidr-v6=CIDR (its first address is the gateway)."""
    try:
        network = ipaddress.IPv6Network(cidr, strict=False)
    except ValueError:
        raise ValueError("invalid fixed-cidr-v6=%r: want an IPv6 CIDR, e.g. fd00:1::/64" % cidr) from None
    if network.num_addresses < 4:
        raise ValueError("invalid fixed-cidr-v6=%s: the subnet is too small" % network)
    return {"EnableIPv6": True, "Subnet6": str(network), "Gateway6": str(network.network_address + 1)}


class Catalog:
    """Looks networks up by name, ID or ID prefix; creates and removes user-defined ones."""

    def __init__(self, directory, device=DEFAULT_BRIDGE, bip=None, fixed_cidr_v6=None):
        """fixed_cidr_v6: the default bridge's IPv6 subnet (dockerd's --ipv6 --fixed-cidr-v6), or None."""
        self.dir = directory
        self.path = os.path.join(directory, "networks.json")
        self.explicit_bip = bip
        meta = read_json(self.path, {}) or {}
        self.builtin = {}
        for name in BUILTIN:
            entry = meta.get(name) if isinstance(meta.get(name), dict) else {}
            self.builtin[name] = {
                "Id": entry.get("Id") or random_id(),
                "Created": entry.get("Created") or now_rfc3339(),
            }
        if bip:
            try:
                iface = ipaddress.IPv4Interface(bip)
            except ValueError:
                raise ValueError("invalid bip=%r: want an address with prefix, e.g. 172.18.0.1/16" % bip) from None
            if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
                raise ValueError("invalid bip=%s: the gateway must be a host address" % iface)
        else:
            iface = ipaddress.IPv4Interface(
                "%s/%s" % (meta["Gateway"], meta["Subnet"].split("/")[1])
                if meta.get("Subnet") and meta.get("Gateway")
                else DEFAULT_POOLS[0]
            )
        record = dict(self.builtin["bridge"], Subnet=str(iface.network), Gateway=str(iface.ip), Device=device)
        if fixed_cidr_v6:
            record.update(default_ipv6(fixed_cidr_v6))
        self.default = BridgeNet(directory, "bridge", record, default=True)
        self.custom = {}
        for name, rec in sorted((meta.get("Custom") or {}).items()):
            try:
                self.custom[name] = BridgeNet(directory, name, rec)
            except (KeyError, ValueError, IpamError):
                continue  # a hand-damaged record: the network is forgotten, not the engine
        self.save()

    def save(self):
        meta = dict(self.builtin)
        meta["Subnet"], meta["Gateway"] = str(self.default.subnet), str(self.default.gateway)
        meta["Custom"] = {name: net.record() for name, net in self.custom.items()}
        write_json(self.path, meta)

    def set_default_subnet(self, iface):
        record = dict(self.default.record(), Subnet=str(iface.network), Gateway=str(iface.ip))
        self.default = BridgeNet(self.dir, "bridge", record, default=True)
        self.save()

    # -- lookups -----------------------------------------------------------------------------
    def bridged(self):
        return [self.default] + [self.custom[n] for n in sorted(self.custom)]

    def bridge_net(self, name):
        """The BridgeNet called `name` ('bridge' is the default one), or None."""
        if name == "bridge":
            return self.default
        return self.custom.get(name)

    def names(self):
        return list(BUILTIN) + sorted(self.custom)

    def network_id(self, name):
        if name in self.builtin:
            return self.builtin[name]["Id"]
        net = self.custom.get(name)
        return net.id if net else ""

    def resolve(self, ref):
        """Network name for a name, full ID or unique ID prefix; NotFound otherwise."""
        ref = (ref or "").strip()
        names = self.names()
        if ref in names:
            return ref
        for name in names:
            if self.network_id(name) == ref:
                return name
        matches = [name for name in names if ref and self.network_id(name).startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise NotFound("network %s not found" % ref)

    # -- user-defined networks -----------------------------------------------------------------
    def _taken(self):
        return [net.subnet for net in self.bridged()] + [net.subnet6 for net in self.bridged() if net.subnet6]

    def create(
        self,
        name,
        subnet=None,
        gateway=None,
        internal=False,
        labels=None,
        options=None,
        routed=lambda network: False,
        ip_range=None,
        aux_addresses=None,
        ipv6=None,
    ):
        """A new user-defined bridge network. `routed(network)` says if the host routes it. `ipv6`
        (--ipv6): None for IPv4 only, else a Pool6 (its subnet may be empty: a ULA /64 is picked)."""
        if not name or "/" in name or len(name) > 200:
            raise InvalidParameter("invalid network name %r" % name)
        if name in self.names():
            raise Conflict("network with name %s already exists" % name)
        taken = self._taken()
        if subnet:
            network, gw = checked_subnet(subnet, gateway, 4, taken, ip_range)
        else:
            if gateway:
                raise InvalidParameter("a gateway needs a subnet")
            if ip_range or aux_addresses:
                raise InvalidParameter("an ip-range or auxiliary addresses need a subnet")
            for pool in DEFAULT_POOLS:
                iface = ipaddress.IPv4Interface(pool)
                if not any(iface.network.overlaps(t) for t in taken) and not routed(iface.network):
                    network, gw = iface.network, iface.ip
                    break
            else:
                raise Conflict(
                    "could not find an available, non-overlapping IPv4 address pool "
                    "among the defaults to assign to the network"
                )
        ip_range, aux_addresses = check_pool_extras(network, gw, ip_range, aux_addresses)
        six: dict = {"EnableIPv6": False}
        if ipv6 is not None:
            if ipv6.subnet:
                network6, gw6 = checked_subnet(ipv6.subnet, ipv6.gateway, 6, taken, ipv6.ip_range)
            else:
                if ipv6.gateway or ipv6.ip_range or ipv6.aux_addresses:
                    raise InvalidParameter("an IPv6 gateway, ip-range or auxiliary addresses need an IPv6 subnet")
                network6 = pick_ula_subnet(taken, routed)
                gw6 = network6.network_address + 1
            range6, aux6 = check_pool_extras(network6, gw6, ipv6.ip_range, ipv6.aux_addresses)
            six = {
                "EnableIPv6": True,
                "Subnet6": str(network6),
                "Gateway6": str(gw6),
                # dockerd's IPAM.Config shows a gateway only when one was given or the pool was picked
                "Gateway6Shown": bool(ipv6.gateway or not ipv6.subnet),
                "IPRange6": range6,
                "AuxAddresses6": aux6,
            }
        net_id = random_id()
        record = {
            "Id": net_id,
            "Created": now_rfc3339(),
            "Subnet": str(network),
            "Gateway": str(gw),
            "GatewayShown": bool(gateway or not subnet),
            "Device": "br-" + net_id[:12],
            "Internal": bool(internal),
            "Labels": dict(labels or {}),
            "Options": dict(options or {}),
            "IPRange": ip_range,
            "AuxAddresses": aux_addresses,
        }
        record.update(six)
        net = BridgeNet(self.dir, name, record)
        self.custom[name] = net
        self.save()
        return net

    def remove(self, name):
        net = self.custom.pop(name)
        self.save()
        for path in (net.ipam_path, net.ipam6_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return net
