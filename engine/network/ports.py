"""Published ports: parse PortBindings/ExposedPorts, reserve host ports, shape Ports for the API.

As dockerd 20.10 does (libnetwork's allocatePorts with the userland proxy), a binding on every address
(HostIp "" or 0.0.0.0) is published on IPv4 (0.0.0.0) and, when this host has IPv6, on IPv6 (::) with
the same host port: two entries in Ports, two listeners (the IPv6 one IPv6-only). An IPv6 listener
forwards to the container's IPv6 address if it has one, else to its IPv4 address (portproxy.py).
"""

import errno
import ipaddress
import socket
import threading

from dockyard.engine.network.fsutil import read_json, write_json

PROTOCOLS = ("tcp", "udp")


class PortSpecError(ValueError):
    """A port key or binding the engine cannot honour (a 400 at create, a 500 at start)."""


class PortAllocationError(Exception):
    """A host port is taken: by another container (`allocated`) or by another program."""


def parse_port_key(key):
    """'80/tcp' | '80' | '53/udp' -> (80, 'tcp'). Ranges never reach the API (the CLI expands them)."""
    text = str(key).strip()
    port_text, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise PortSpecError("unsupported protocol %r in port %r (only tcp and udp)" % (proto, text))
    port = _port_number(port_text, text)
    if port == 0:
        raise PortSpecError("invalid port %r: container port must not be 0" % text)
    return port, proto


def _port_number(text, whole):
    if not text.isdigit():
        raise PortSpecError("invalid port %r" % whole)
    port = int(text)
    if port > 65535:
        raise PortSpecError("invalid port %r: out of range 0-65535" % whole)
    return port


def parse_host_port(text):
    """'' -> (0, 0) (any free port); '8080' -> (8080, 8080); '8000-8010' -> (8000, 8010)."""
    text = str(text if text is not None else "").strip()
    if not text:
        return 0, 0
    lo_text, sep, hi_text = text.partition("-")
    lo = _port_number(lo_text, text)
    hi = _port_number(hi_text, text) if sep else lo
    if hi < lo:
        raise PortSpecError("invalid host port range %r" % text)
    if lo == 0 and hi != 0:
        raise PortSpecError("invalid host port range %r" % text)
    return lo, hi


def parse_host_ip(text):
    """'' -> '0.0.0.0'; IPv4 and IPv6 addresses (`-p [::]:8080:80`, `-p [::1]:8080:80`) as given.
    An IPv6 binding is a listener of its own (IPv6 only), as docker-proxy's for dockerd 20.10."""
    text = str(text or "").strip()
    if text in ("", "0.0.0.0"):
        return "0.0.0.0"
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise PortSpecError("invalid host IP %r in port binding" % text) from None
    return str(addr)


class PortRequest:
    """One wanted mapping: host_ip:[lo-hi] -> container port/proto (lo = hi = 0: any port)."""

    __slots__ = ("container_port", "proto", "host_ip", "lo", "hi")

    def __init__(self, container_port, proto, host_ip="0.0.0.0", lo=0, hi=0):
        self.container_port = container_port
        self.proto = proto
        self.host_ip = host_ip
        self.lo = lo
        self.hi = hi

    @property
    def key(self):
        return "%d/%s" % (self.container_port, self.proto)

    @property
    def dual(self):
        """Published on every address: IPv6's :: too, where the host has IPv6."""
        return self.host_ip == "0.0.0.0"

    def __eq__(self, other):
        return isinstance(other, PortRequest) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    def __repr__(self):
        return "PortRequest(%s %s:%d-%d)" % (self.key, self.host_ip, self.lo, self.hi)


def exposed_ports(config):
    """Container config ExposedPorts -> sorted list of (port, proto)."""
    out = set()
    for key in (config or {}).get("ExposedPorts") or {}:
        out.add(parse_port_key(key))
    return sorted(out)


def requested_ports(host_config, config):
    """What to publish: every PortBindings entry, plus (-P) each exposed port not bound yet."""
    host_config = host_config or {}
    out = []
    bound = set()
    for key, bindings in sorted((host_config.get("PortBindings") or {}).items()):
        port, proto = parse_port_key(key)
        for binding in bindings or ():
            binding = binding or {}
            lo, hi = parse_host_port(binding.get("HostPort"))
            out.append(PortRequest(port, proto, parse_host_ip(binding.get("HostIp")), lo, hi))
            bound.add((port, proto))
    if host_config.get("PublishAllPorts"):
        for port, proto in exposed_ports(config):
            if (port, proto) not in bound:
                out.append(PortRequest(port, proto))
    return out


def validate(host_config, config):
    """Raise PortSpecError for bindings that can never work (checked at create)."""
    requested_ports(host_config, config)
    exposed_ports(config)


def port_map(bindings, config, host_config=None):
    """NetworkSettings.Ports: {"80/tcp": [{"HostIp", "HostPort"}], "443/tcp": None (exposed only)}."""
    out = {}
    for port, proto in exposed_ports(config):
        out["%d/%s" % (port, proto)] = None
    for key in (host_config or {}).get("PortBindings") or {}:
        port, proto = parse_port_key(key)
        out.setdefault("%d/%s" % (port, proto), None)
    for b in bindings:
        key = "%d/%s" % (b["ContainerPort"], b["Proto"])
        if out.get(key) is None:
            out[key] = []
        out[key].append({"HostIp": b["HostIp"], "HostPort": str(b["HostPort"])})
    return out


def ps_ports(settings, config=None):
    """GET /containers/json Ports: [{"IP", "PrivatePort", "PublicPort", "Type"}] (+ exposed only)."""
    out = []
    seen = set()
    for key, bindings in sorted(((settings or {}).get("Ports") or {}).items()):
        port, proto = parse_port_key(key)
        seen.add((port, proto))
        if not bindings:
            out.append({"PrivatePort": port, "Type": proto})
            continue
        for b in bindings:
            out.append(
                {
                    "IP": b.get("HostIp") or "0.0.0.0",
                    "PrivatePort": port,
                    "PublicPort": int(b["HostPort"]),
                    "Type": proto,
                }
            )
    for port, proto in exposed_ports(config):
        if (port, proto) not in seen:
            out.append({"PrivatePort": port, "Type": proto})
    return out


def _overlaps(ip_a, ip_b):
    """Whether two host addresses' listeners would clash: the same family and address, or a wildcard
    of that family (IPv6 listeners are IPv6-only, so 0.0.0.0 and :: do not clash)."""
    if (":" in ip_a) != (":" in ip_b):
        return False
    return ip_a == ip_b or bool({"0.0.0.0", "::"} & {ip_a, ip_b})


def ipv6_listenable():
    """Whether this network namespace can listen on IPv6 (dockerd skips its :: bindings otherwise)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", 0))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _probe(host_ip, port, proto):
    """Bind host_ip:port (0: the kernel picks from the ephemeral range) and return the port."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host_ip, port))
        if proto == "tcp":
            sock.listen(1)  # a listener conflicts with other listeners even under SO_REUSEADDR
        return sock.getsockname()[1]
    finally:
        sock.close()


def _where(host_ip, port):
    """host:port as dockerd's port allocator writes it in its errors ("0.0.0.0:80", ":::80")."""
    return "%s:%d" % (host_ip, port)


class PortAllocator:
    """Host ports handed to containers, persisted so an engine restart keeps the bookkeeping.

    The proxies bind the ports later, in the container's supervisor; the reservation here
    makes a second container asking for the same port fail at start the way dockerd does.
    """

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        raw = read_json(path, {}) or {}
        self._owners = {}  # owner -> list of binding dicts
        for owner, items in (raw.get("owners") or {}).items():
            self._owners[owner] = list(items)

    def _save(self):
        # not fsynced: reservations belong to running containers; after a power cut none runs and the
        # engine's start releases every other owner's (NetworkManager.reconcile), whatever the file held
        write_json(self.path, {"owners": self._owners}, durable=False)

    def bindings_of(self, owner):
        with self._lock:
            return [dict(b) for b in self._owners.get(owner, ())]

    def owners(self):
        with self._lock:
            return list(self._owners)

    def _taken(self, host_ip, port, proto, extra):
        for items in list(self._owners.values()) + [extra]:
            for b in items:
                if b["Proto"] == proto and b["HostPort"] == port and _overlaps(b["HostIp"], host_ip):
                    return True
        return False

    def reserve(self, owner, requests):
        """Pick a host port for every request (two bindings, IPv4 and IPv6, for one on every address);
        all or nothing. -> list of binding dicts."""
        with self._lock:
            self._owners.pop(owner, None)  # a restart re-reserves from scratch
            chosen = []
            six = any(req.dual for req in requests) and ipv6_listenable()
            for req in requests:
                chosen.extend(self._pick(req, chosen, six and req.dual))
            if chosen:
                self._owners[owner] = chosen
            self._save()
            return [dict(b) for b in chosen]

    def _pick(self, req, chosen, six=False):
        """The bindings for one request: its host address's, and with `six` the same port on :: too."""
        addresses = [req.host_ip] + (["::"] if six else [])

        def bindings(port):
            return [
                {"HostIp": ip, "HostPort": port, "ContainerPort": req.container_port, "Proto": req.proto}
                for ip in addresses
            ]

        if req.lo == 0:
            for _ in range(64):  # the kernel's pick may be one we promised to a stopped proxy
                try:
                    port = _probe(req.host_ip, 0, req.proto)
                except OSError as exc:
                    raise PortAllocationError(self._os_message(req.proto, req.host_ip, 0, exc)) from None
                if any(self._taken(ip, port, req.proto, chosen) for ip in addresses):
                    continue
                try:
                    for ip in addresses[1:]:
                        _probe(ip, port, req.proto)
                except OSError:
                    continue  # free on IPv4 only: another pick
                return bindings(port)
            raise PortAllocationError("no free host port for %s on %s" % (req.key, req.host_ip))
        last_error = None
        for port in range(req.lo, req.hi + 1):
            taken = [ip for ip in addresses if self._taken(ip, port, req.proto, chosen)]
            if taken:
                last_error = "Bind for %s failed: port is already allocated" % _where(taken[0], port)
                continue
            try:
                for ip in addresses:
                    _probe(ip, port, req.proto)
            except OSError as exc:
                last_error = self._os_message(req.proto, ip, port, exc)
                continue
            return bindings(port)
        raise PortAllocationError(last_error)

    @staticmethod
    def _os_message(proto, host_ip, port, exc):
        reason = {
            errno.EADDRINUSE: "address already in use",
            errno.EADDRNOTAVAIL: "cannot assign requested address",
            errno.EACCES: "permission denied",
        }.get(exc.errno, exc.strerror or str(exc))
        six = ":" in host_ip
        where = ("[%s]:%d" if six else "%s:%d") % (host_ip, port)  # Go's net errors bracket IPv6
        return "Error starting userland proxy: listen %s%s %s: bind: %s" % (
            proto,
            "6" if six else "4",
            where,
            reason,
        )

    def release(self, owner):
        with self._lock:
            if self._owners.pop(owner, None) is not None:
                self._save()

    def retain(self, owners):
        """Drop reservations of every owner not in `owners` (after a reboot)."""
        with self._lock:
            gone = [o for o in self._owners if o not in owners]
            for owner in gone:
                del self._owners[owner]
            if gone:
                self._save()
            return gone
