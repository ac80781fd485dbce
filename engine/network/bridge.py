"""Bridge device and per-container veth pairs, through pyroute2 (netlink), in the engine's netns."""

import errno
import ipaddress
import logging
import os
import socket

from dockyard.engine.network.netns import netns_path, run_in_netns

log = logging.getLogger("dockyard.engine")

CONTAINER_IFNAME = "eth0"
MAIN_TABLE = 254  # RT_TABLE_MAIN
RTN_UNICAST = 1
IFA_F_NODAD = 0x02  # an IPv6 address usable at once: no duplicate address detection (the engine assigns them)


class BridgeError(Exception):
    """The bridge or a container's link could not be set up."""


def _iproute():
    # Imported lazily: pyroute2 costs ~15 MB and ~0.2 s to import, and only bridge
    # networking needs it (an engine running only --network none/host never loads it).
    from pyroute2.iproute.linux import IPRoute

    return IPRoute()


def _netlink_errors():
    from pyroute2.netlink.exceptions import NetlinkError

    return (NetlinkError, OSError)


def _lookup(ipr, ifname):
    """Index of a link in the calling thread's netns, or None. An ioctl: pyroute2's link_lookup
    dumps every link, which gets slow with many containers."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def host_ifname(container_id, index=0):
    """Host-side veth name of the container's `index`th network link (<= 15 chars); index 0 keeps the
    name earlier engines gave a container's only link, so their veths are still found."""
    if index == 0:
        return "veth" + container_id[:11]
    return "veth%s%02x" % (container_id[:9], index % 256)


def container_ifname(index):
    """eth0 for the container's first network, eth1 for the next one connected, ..."""
    return "eth%d" % index


def mac_for(ip):
    """moby's scheme: 02:42 followed by the four bytes of the IPv4 address."""
    return "02:42:" + ":".join("%02x" % b for b in ipaddress.IPv4Address(ip).packed)


def overlapping_routes(network, own_devices=()):
    """Routes of this netns (main table) that overlap `network` (IPv4 or IPv6), except those on
    `own_devices` (the engine's own bridges)."""
    network = ipaddress.ip_network(network)
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    own = {own_devices} if isinstance(own_devices, str) else set(own_devices)
    found = []
    with _iproute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=family, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None:
                continue  # the default route overlaps everything by design
            dev = names.get(route.get_attr("RTA_OIF"), "")
            if dev in own:
                continue
            net = ipaddress.ip_network("%s/%d" % (dst, route["dst_len"]), strict=False)
            if net.version == 6 and (net.is_link_local or net.is_multicast):
                continue  # fe80::/64 and ff00::/8 are on every IPv6 link
            if net.overlaps(network):
                found.append("%s dev %s" % (net, dev or "?"))
    return found


def ensure_bridge(name, gateway, prefixlen, mtu=None, gateway6=None, prefixlen6=None):
    """Create (or fix up) the bridge `name` with gateway/prefixlen as its only IPv4 address, and
    gateway6/prefixlen6 as its only global IPv6 one when given (link-local ones are the kernel's), up."""
    errors = _netlink_errors()
    try:
        with _iproute() as ipr:
            index = _lookup(ipr, name)
            if index is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge")
                except errors as exc:
                    if getattr(exc, "code", None) != errno.EEXIST:  # a concurrent engine won
                        raise
                index = _lookup(ipr, name)
            link = ipr.get_links(index)[0]
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
            if kind != "bridge":
                raise BridgeError("%s exists and is not a bridge (%s)" % (name, kind or "unknown"))
            if mtu and link.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=index, mtu=mtu)
            have = [
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=socket.AF_INET)
            ]
            for addr, plen in have:
                if (addr, plen) != (str(gateway), prefixlen):
                    ipr.addr("del", index=index, address=addr, prefixlen=plen)
            if (str(gateway), prefixlen) not in have:
                ipr.addr(
                    "add", index=index, address=str(gateway), prefixlen=prefixlen, **_broadcast(gateway, prefixlen)
                )
            if gateway6 is not None:
                set_ipv6_disabled(name, False)
            have6 = [
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=index, family=socket.AF_INET6)
                if not ipaddress.IPv6Address(a.get_attr("IFA_ADDRESS")).is_link_local
            ]
            want6 = (str(gateway6), prefixlen6) if gateway6 is not None else None
            for addr, plen in have6:
                if (addr, plen) != want6:
                    ipr.addr("del", index=index, address=addr, prefixlen=plen)
            if want6 is not None and want6 not in have6:
                ipr.addr("add", index=index, address=want6[0], prefixlen=want6[1], flags=IFA_F_NODAD)
            ipr.link("set", index=index, state="up")
    except errors as exc:
        raise BridgeError("cannot set up bridge %s: %s" % (name, exc)) from None


def delete_link(ifname):
    """Delete a link of this netns if it exists (deleting one veth end removes both)."""
    errors = _netlink_errors()
    try:
        with _iproute() as ipr:
            index = _lookup(ipr, ifname)
            if index is not None:
                ipr.link("del", index=index)
                return True
    except errors as exc:
        if getattr(exc, "code", None) != errno.ENODEV:  # gone meanwhile: its netns died
            raise BridgeError("cannot delete %s: %s" % (ifname, exc)) from None
    return False


def set_ipv6_disabled(ifname, disabled):
    """net.ipv6.conf.<ifname>.disable_ipv6 in the calling thread's network namespace (no-op without IPv6)."""
    path = "/proc/sys/net/ipv6/conf/%s/disable_ipv6" % ifname
    try:
        with open(path, "r+") as fh:
            if fh.read().strip() != ("1" if disabled else "0"):
                fh.seek(0)
                fh.write("1\n" if disabled else "0\n")
    except FileNotFoundError:
        if not disabled:
            raise BridgeError("IPv6 is not available in this kernel (no %s)" % path) from None


def _configure_inside(ip, prefixlen, gateway, mtu, ifname=CONTAINER_IFNAME, default_route=True, six=None):
    """`six`: (address, prefixlen, gateway) of the container's IPv6 address on this link, or None. When
    `default_route`, the container's default routes go through this link: IPv4, and IPv6 on a dual-stack
    network (one link holds both, as dockerd's gateway endpoint; see wiring.py)."""
    with _iproute() as ipr:
        lo = _lookup(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")
        eth = _lookup(ipr, ifname)
        if eth is None:
            raise BridgeError("%s did not arrive in the container's namespace" % ifname)
        if mtu:
            ipr.link("set", index=eth, mtu=mtu)
        ipr.addr("add", index=eth, address=str(ip), prefixlen=prefixlen, **_broadcast(ip, prefixlen))
        if six is not None:
            set_ipv6_disabled(ifname, False)
            ipr.addr("add", index=eth, address=str(six[0]), prefixlen=six[1], flags=IFA_F_NODAD)
        ipr.link("set", index=eth, state="up")
        if default_route:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=eth)
            if six is not None:
                ipr.route("add", dst="::/0", gateway=str(six[2]), oif=eth, family=socket.AF_INET6)


def _broadcast(ip, prefixlen):
    """The `broadcast` argument of an IPv4 address (as dockerd sets it, `brd` in `ip addr`); none on /31, /32."""
    if prefixlen > 30:
        return {}
    return {"broadcast": str(ipaddress.IPv4Interface("%s/%d" % (ip, prefixlen)).network.broadcast_address)}


def _default_routes(ipr, family):
    """The default routes of the main table of this netns, of one address family."""
    return [
        route
        for route in ipr.get_routes(family=family, table=MAIN_TABLE)
        if route["dst_len"] == 0 and route.get_attr("RTA_TABLE") == MAIN_TABLE and route["type"] == RTN_UNICAST
    ]


def set_default_routes(netns, ifname, gateway, gateway6=None):
    """The container of `netns` gets its default routes through `ifname` only: IPv4 via gateway, IPv6 via
    gateway6 (none when None), replacing those it had (the gateway network changed on a connect or
    disconnect: dockerd moves both routes to the new one)."""

    def inside():
        with _iproute() as ipr:
            eth = _lookup(ipr, ifname)
            if eth is None:
                raise BridgeError("%s is not in the container's namespace" % ifname)
            for family, dst, via in ((socket.AF_INET, "0.0.0.0/0", gateway), (socket.AF_INET6, "::/0", gateway6)):
                wanted = str(via) if via is not None else None
                have = False
                for route in _default_routes(ipr, family):
                    if (
                        wanted is not None
                        and route.get_attr("RTA_GATEWAY") == wanted
                        and route.get_attr("RTA_OIF") == eth
                    ):
                        have = True
                        continue
                    match = {"priority": "RTA_PRIORITY", "oif": "RTA_OIF", "gateway": "RTA_GATEWAY"}
                    found = {key: route.get_attr(attr) for key, attr in match.items()}
                    kwargs = {key: value for key, value in found.items() if value is not None}
                    ipr.route("del", dst=dst, family=family, table=MAIN_TABLE, **kwargs)
                if wanted is not None and not have:
                    ipr.route("add", dst=dst, gateway=wanted, oif=eth, family=family)

    try:
        run_in_netns(netns, inside)
    except _netlink_errors() as exc:
        raise BridgeError("cannot set the default routes on %s: %s" % (ifname, exc)) from None


def _isolate_port(ipr, index, veth):
    """Bridge-port isolation (Linux 4.18+): isolated ports exchange no frames with each other, only
    with non-isolated ports and the bridge itself (the gateway): Docker's enable_icc=false."""
    ipr.brport("set", index=index, isolated=1)
    info = ipr.brport("show", index=index)
    flags = info[0].get_attr("IFLA_PROTINFO") if info else None
    if flags is None or flags.get_attr("IFLA_BRPORT_ISOLATED") != 1:
        raise BridgeError(
            "cannot isolate %s on its bridge (com.docker.network.bridge.enable_icc=false needs Linux 4.18 or later)"
            % veth
        )


def attach_container(
    pid,
    bridge,
    veth,
    ip,
    prefixlen,
    gateway,
    mac,
    mtu=None,
    isolated=False,
    ifname=CONTAINER_IFNAME,
    default_route=True,
    six=None,
):
    """veth pair: `veth` on the bridge here, `ifname` (ip, mac, the default route unless told not to)
    in pid's netns. isolated: the port talks to the bridge (gateway) only, not to other isolated ports.
    six: (IPv6 address, prefixlen, IPv6 gateway) on a dual-stack network (its default route too when
    default_route)."""
    errors = _netlink_errors()
    ns_fd = os.open(netns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _iproute() as ipr:
            master = _lookup(ipr, bridge)
            if master is None:
                raise BridgeError("bridge %s does not exist" % bridge)
            stale = _lookup(ipr, veth)
            if stale is not None:  # left by a container that died with the engine down
                ipr.link("del", index=stale)
            peer = {"ifname": ifname, "net_ns_fd": ns_fd, "address": mac}
            ipr.link("add", ifname=veth, kind="veth", peer=peer)
            index = _lookup(ipr, veth)
            if mtu:
                ipr.link("set", index=index, mtu=mtu)
            ipr.link("set", index=index, master=master)
            if isolated:
                try:
                    _isolate_port(ipr, index, veth)
                except BaseException:
                    ipr.link("del", index=index)
                    raise
            ipr.link("set", index=index, state="up")
    except errors as exc:
        raise BridgeError("cannot create the veth pair for pid %d: %s" % (pid, exc)) from None
    finally:
        os.close(ns_fd)
    try:
        run_in_netns(netns_path(pid), _configure_inside, ip, prefixlen, gateway, mtu, ifname, default_route, six)
    except errors as exc:
        delete_link(veth)
        raise BridgeError("cannot configure %s in the container: %s" % (ifname, exc)) from None
    except BaseException:
        delete_link(veth)
        raise
