"""Network resource: the built-in networks and user-defined bridge networks."""

import ipaddress
import re

from dockyard.engine.api import bodies
from dockyard.engine.api.responses import json_response
from dockyard.engine.errors import Forbidden, InvalidParameter
from dockyard.engine.network.attachments import DISCONNECTED, endpoint_request
from dockyard.engine.network.catalog import BUILTIN, Pool6

_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
MAX_NETWORK_NAME = 200
# Docker's rule for object names; the bridge device and file names derive from the id, not the name.
NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,%d}" % (MAX_NETWORK_NAME - 1))


def register(router, engine):
    router.add("GET", "/networks", list_networks)
    router.add("POST", "/networks/create", create_network)
    router.add("POST", "/networks/prune", prune_networks)
    router.add("GET", "/networks/{id}", inspect_network)
    router.add("DELETE", "/networks/{id}", remove_network)
    router.add("POST", "/networks/{id}/connect", connect_network)
    router.add("POST", "/networks/{id}/disconnect", disconnect_network)


def _matches(pattern, value):
    """moby matches name/id filters as regular expressions (so a plain word is a substring)."""
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return pattern in value


def list_networks(req):
    manager = req.engine.network
    filters = req.filters()
    filters.validate(_FILTERS)
    for value in filters.get("type"):
        if value not in ("custom", "builtin"):
            raise InvalidParameter("invalid filter: 'type'='%s'" % value)
    for value in filters.get("dangling"):
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidParameter("invalid filter 'dangling=%s'" % value)
    out = []
    for net in manager.list():
        if filters.get("name") and not any(_matches(p, net["Name"]) for p in filters.get("name")):
            continue
        if filters.get("id") and not any(_matches(p, net["Id"]) for p in filters.get("id")):
            continue
        if not filters.exact_match("driver", net["Driver"]):
            continue
        if not filters.exact_match("scope", net["Scope"]):
            continue
        kind = "builtin" if net["Name"] in BUILTIN else "custom"
        if not filters.exact_match("type", kind):
            continue
        if not filters.match_labels(net["Labels"]):
            continue
        dangling = [v.lower() in ("true", "1") for v in filters.get("dangling")]
        if dangling and dangling[0] != (kind == "custom" and not manager.in_use(net["Name"])):
            continue
        out.append(net)
    return out


def inspect_network(req):
    return req.engine.network.inspect(req.params["id"])


def create_network(req):
    body = req.json({}, schema=bodies.NETWORK_CREATE) or {}
    name = body.get("Name") or ""
    if not name:
        raise InvalidParameter("network name is required")
    if not NETWORK_NAME.fullmatch(name):
        raise InvalidParameter(
            "invalid network name %r: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at most %d characters"
            % (name, MAX_NETWORK_NAME)
        )
    if body.get("Driver") not in (None, "", "bridge"):
        raise InvalidParameter(
            "dockyard supports only the bridge driver for user-defined networks, not %r" % body["Driver"]
        )
    if body.get("ConfigOnly") or body.get("ConfigFrom") and (body["ConfigFrom"] or {}).get("Network"):
        raise InvalidParameter("config-only networks are not supported")
    ipam = body.get("IPAM") or {}
    if ipam.get("Driver") not in (None, "", "default"):
        raise InvalidParameter("IPAM driver %r is not supported" % ipam["Driver"])
    v4, v6 = _pools_by_family(ipam.get("Config") or [])
    if v6 is not None and not body.get("EnableIPv6"):
        raise InvalidParameter("IPv6 subnet %s given without --ipv6 (EnableIPv6)" % v6.get("Subnet"))
    subnet, gateway = v4.get("Subnet") or None, v4.get("Gateway") or None
    ip_range, aux = v4.get("IPRange") or None, dict(v4.get("AuxiliaryAddresses") or {})
    pool6 = None
    if body.get("EnableIPv6"):
        v6 = v6 or {}
        pool6 = Pool6(
            v6.get("Subnet") or None,
            v6.get("Gateway") or None,
            v6.get("IPRange") or None,
            dict(v6.get("AuxiliaryAddresses") or {}),
        )
    net = req.engine.network.create_network(
        name,
        subnet,
        gateway,
        bool(body.get("Internal")),
        body.get("Labels") or {},
        body.get("Options") or {},
        ip_range=ip_range,
        aux_addresses=aux,
        ipv6=pool6,
    )
    return json_response({"Id": net.id, "Warning": ""}, 201)


def _pools_by_family(configs) -> tuple:
    """IPAM.Config split into its IPv4 entry ({} if none) and IPv6 entry (None if none); the bridge
    driver takes at most one subnet of each family (dockerd's rule), a gateway or range without a subnet
    belongs to IPv4."""
    v4: dict = {}
    v6 = None
    for cfg in configs:
        cfg = cfg or {}
        subnet = cfg.get("Subnet") or ""
        try:
            six = bool(subnet) and ipaddress.ip_network(subnet, strict=False).version == 6
        except ValueError:
            raise InvalidParameter("invalid subnet %r" % subnet) from None
        if six:
            if v6 is not None:
                raise InvalidParameter("bridge networks take at most one IPv6 subnet")
            v6 = cfg
        else:
            if v4:
                raise InvalidParameter("bridge networks take at most one IPv4 subnet")
            v4 = cfg
    return v4, v6


def remove_network(req):
    req.engine.network.remove_network(req.params["id"])
    return None


def prune_networks(req):
    manager = req.engine.network
    filters = req.filters()
    filters.validate(("label", "label!", "until"))
    deleted = []
    for net in manager.list():
        if net["Name"] in BUILTIN or manager.in_use(net["Name"]):
            continue
        if not filters.match_labels(net["Labels"], "label", "label!"):
            continue
        manager.remove_network(net["Name"])
        deleted.append(net["Name"])
    return {"NetworksDeleted": deleted}


NETWORK_CONNECT = bodies.Obj(
    "network.ConnectOptions", {"Container": bodies.STR, "EndpointConfig": bodies.ENDPOINT_SETTINGS}
)
NETWORK_DISCONNECT = bodies.Obj("network.DisconnectOptions", {"Container": bodies.STR, "Force": bodies.BOOL})
HOST_CONFLICT = "container cannot be disconnected from host network or connected to host network"
NONE_CONFLICT = "container cannot be connected to multiple networks with one of the networks in private (none) mode"


def _target(req, schema):
    """(network name, container, body) of a connect/disconnect request; 404 for either unknown."""
    name = req.engine.network.resolve(req.params["id"])
    body = req.json(default={}, schema=schema) or {}
    ref = body.get("Container") or ""
    if not ref:
        raise InvalidParameter("no container specified")
    return name, req.engine.containers.get(ref), body


def connect_network(req):
    """`docker network connect [--alias A] [--ip IP] NET CTR`: a running container gets the interface
    now; a stopped one remembers the network and joins it at its next start."""
    network = req.engine.network
    name, c, body = _target(req, NETWORK_CONNECT)
    if name in ("host", "none"):
        raise InvalidParameter(HOST_CONFLICT if name == "host" else NONE_CONFLICT)
    request = endpoint_request(name, body.get("EndpointConfig"))
    network.check_request(name, request)
    with c.lock:
        current = network.attachments(c, fallback=False)
        if name in current:
            raise Forbidden("endpoint with name %s already exists in network %s" % (c.name, name))
        if "host" in current:
            raise InvalidParameter(HOST_CONFLICT)
        if "none" in current:
            raise InvalidParameter(NONE_CONFLICT)
        if c.running and c.state.get("Pid"):
            settings = network.connect_running(c, int(c.state["Pid"]), name, request)
            c.state["NetworkSettings"] = settings
            c.save_state()
        attachments = dict(c.record.get("NetworkAttachments") or {})
        attachments[name] = request
        c.record["NetworkAttachments"] = attachments
        c.save_config()
    req.engine.events.emit("network", "connect", network.catalog.network_id(name), {"container": c.id, "name": name})
    return None


def disconnect_network(req):
    """`docker network disconnect NET CTR`: the interface goes now (running) and at later starts."""
    network = req.engine.network
    name, c, _ = _target(req, NETWORK_DISCONNECT)
    with c.lock:
        current = network.attachments(c, fallback=False)
        if name not in current:
            raise Forbidden("container %s is not connected to network %s" % (c.id, name))
        if name == "host":
            raise InvalidParameter(HOST_CONFLICT)
        if c.running:
            c.state["NetworkSettings"] = network.disconnect_running(c, name)
            c.save_state()
        attachments = dict(c.record.get("NetworkAttachments") or {})
        attachments.pop(name, None)
        if name == network.network_name(c.host_config):
            # The primary (NetworkMode) stays what it is; it is marked left until connected again.
            attachments[name] = {DISCONNECTED: True}
        c.record["NetworkAttachments"] = attachments
        c.save_config()
    req.engine.events.emit("network", "disconnect", network.catalog.network_id(name), {"container": c.id, "name": name})
    return None
