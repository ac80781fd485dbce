"""Docker's swarm mode on `--engine docker` machines, driven over each engine's TLS API (never over SSH).

`create --swarm-master` runs swarm init on the new machine (advertise address = its IP); `--swarm --swarm-join M`
reads a join token from manager M's API at join time (tokens are never stored) and joins; `rm` of a node drains it
through a manager, makes it leave, and removes it from the manager's node list.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from dockyard.provisioner.core import engine_client
from dockyard.provisioner.core.errors import EngineUnreachable, ProvisionError, UsageError

SWARM_PORT = 2377
# Docker Machine's classic-Swarm flags and what replaced them in swarm mode.
CLASSIC_FLAGS = {
    "swarm-discovery": "nodes join a manager with --swarm-join MANAGER (swarm mode needs no discovery service)",
    "swarm-image": "swarm mode is built into Docker Engine; there is no swarm image",
    "swarm-strategy": "swarm mode schedules services itself (spread); use placement constraints on services",
    "swarm-host": "managers listen on port 2377; clients use the engine's own TLS port",
    "swarm-addr": "the advertise address is the machine's IP (or --swarm-opt advertise-addr=...)",
    "swarm-experimental": "use --engine-opt experimental=true",
}
# --swarm-opt KEY=VALUE (swarm init) and --swarm-join-opt KEY=VALUE (swarm join) -> request fields.
INIT_OPTS = {
    "listen-addr": "ListenAddr",
    "advertise-addr": "AdvertiseAddr",
    "data-path-addr": "DataPathAddr",
    "data-path-port": "DataPathPort",
    "default-addr-pool": "DefaultAddrPool",
    "default-addr-pool-mask-length": "SubnetSize",
    "autolock": "AutoLockManagers",
    "availability": "Availability",
    "task-history-limit": "TaskHistoryRetentionLimit",
}
JOIN_OPTS = ("listen-addr", "advertise-addr", "data-path-addr", "availability")


def check_classic_flags(given: Mapping[str, Any]) -> None:
    """Refuse Docker Machine's classic-Swarm flags with what replaced them."""
    for flag, value in given.items():
        if value:
            raise UsageError(f"--{flag} belongs to classic Swarm, which is gone: {CLASSIC_FLAGS[flag]}")


def _kv(items: Sequence[str], known: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.lstrip("-")
        if not sep or key not in known:
            raise UsageError(f'invalid {flag} "{item}": expected KEY=VALUE with KEY one of {", ".join(known)}')
        out[key] = value
    return out


def init_request(ip: str, opts: Sequence[str]) -> dict[str, Any]:
    """The body of POST /swarm/init for a new manager at ip."""
    given = _kv(opts, list(INIT_OPTS), "--swarm-opt")
    body: dict[str, Any] = {"ListenAddr": f"0.0.0.0:{SWARM_PORT}", "AdvertiseAddr": ip, "Spec": {}}
    for key, value in given.items():
        field = INIT_OPTS[key]
        if key == "default-addr-pool":
            body["DefaultAddrPool"] = value.split(",")
        elif key in ("data-path-port", "default-addr-pool-mask-length"):
            body[field] = int(value)
        elif key == "autolock":
            body["Spec"]["EncryptionConfig"] = {"AutoLockManagers": value == "true"}
        elif key == "task-history-limit":
            body["Spec"]["Orchestration"] = {"TaskHistoryRetentionLimit": int(value)}
        else:
            body[field] = value
    return body


def join_request(ip: str, manager_ip: str, token: str, opts: Sequence[str]) -> dict[str, Any]:
    """The body of POST /swarm/join for a node at ip joining the manager at manager_ip."""
    given = _kv(opts, JOIN_OPTS, "--swarm-join-opt")
    body = {
        "ListenAddr": f"0.0.0.0:{SWARM_PORT}",
        "AdvertiseAddr": ip,
        "RemoteAddrs": [f"{manager_ip}:{SWARM_PORT}"],
        "JoinToken": token,
    }
    fields = {"listen-addr": "ListenAddr", "advertise-addr": "AdvertiseAddr", "data-path-addr": "DataPathAddr"}
    for key, value in given.items():
        body[fields.get(key, "Availability")] = value
    return body


class SwarmAPI:
    """The swarm part of one engine's API, over mutual TLS."""

    def __init__(self, url: str, tls: engine_client.TLSFiles, timeout: float = 60.0) -> None:
        self.url, self.tls, self.timeout = url, tls, timeout

    def call(self, method: str, path: str, body: Any = None, ok: Sequence[int] = (200,)) -> Any:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port or 2376
        conn = http.client.HTTPSConnection(
            host, port, timeout=self.timeout, context=engine_client.tls_context(self.tls)
        )
        data = json.dumps(body).encode() if body is not None else None
        headers = {"User-Agent": "dockyard", "Content-Type": "application/json"}
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        except OSError as e:
            raise EngineUnreachable(f"engine at {host}:{port} does not answer: {e}") from None
        finally:
            conn.close()
        if status not in ok:
            try:
                message = json.loads(raw).get("message", "")
            except ValueError:
                message = raw.decode(errors="replace")
            raise ProvisionError(f"{method} {path.split('?')[0]} on {host}: HTTP {status}: {message.strip()}")
        return json.loads(raw) if raw.strip() else None

    def info(self) -> dict[str, Any]:
        """Docker's Info.Swarm: LocalNodeState, NodeID, ControlAvailable, Cluster, Managers, Nodes."""
        return self.call("GET", "/info")["Swarm"]

    def init(self, body: Mapping[str, Any]) -> str:
        return self.call("POST", "/swarm/init", body)

    def join_token(self, manager: bool) -> str:
        return self.call("GET", "/swarm")["JoinTokens"]["Manager" if manager else "Worker"]

    def join(self, body: Mapping[str, Any]) -> None:
        self.call("POST", "/swarm/join", body)

    def leave(self, force: bool = False) -> None:
        self.call("POST", "/swarm/leave" + ("?force=1" if force else ""))

    def nodes(self) -> list[dict[str, Any]]:
        return self.call("GET", "/nodes")

    def node(self, node_id: str) -> dict[str, Any]:
        return self.call("GET", f"/nodes/{node_id}")

    def update_node(self, node_id: str, **spec: str) -> None:
        node = self.node(node_id)
        new = dict(node["Spec"], **spec)
        self.call("POST", f"/nodes/{node_id}/update?version={node['Version']['Index']}", new)

    def remove_node(self, node_id: str, force: bool = False) -> None:
        self.call("DELETE", f"/nodes/{node_id}" + ("?force=1" if force else ""))

    def tasks_on(self, node_id: str) -> list[dict[str, Any]]:
        filters = json.dumps({"node": [node_id], "desired-state": ["running"]})
        return self.call("GET", "/tasks?filters=" + quote(filters))


def init(api: SwarmAPI, ip: str, opts: Sequence[str], log: Callable[[str], None]) -> None:
    log(f"Initializing a swarm with this machine as its manager (advertise address {ip})...")
    api.init(init_request(ip, opts))


def join(
    api: SwarmAPI,
    ip: str,
    manager: SwarmAPI,
    manager_ip: str,
    as_manager: bool,
    opts: Sequence[str],
    log: Callable[[str], None],
) -> None:
    """Join the swarm of `manager`; the token is read from the manager now and kept nowhere."""
    state = manager.info()
    if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
        raise ProvisionError(f"{manager_ip} is not a swarm manager (its swarm state: {state.get('LocalNodeState')})")
    log(f"Joining the swarm of {manager_ip} as a {'manager' if as_manager else 'worker'}...")
    api.join(join_request(ip, manager_ip, manager.join_token(as_manager), opts))


def keeps_quorum_without(nodes: Sequence[Mapping[str, Any]], node_id: str) -> bool:
    """Would the other managers still be a Raft majority once manager node_id is gone?"""
    managers = [n for n in nodes if n.get("ManagerStatus") and n["ID"] != node_id]
    reachable = [n for n in managers if n["ManagerStatus"].get("Reachability") == "reachable"]
    return bool(managers) and len(reachable) >= len(managers) // 2 + 1


def remove_node(
    node: SwarmAPI, manager: SwarmAPI | None, force: bool, log: Callable[[str], None], drain_timeout: float = 60.0
) -> None:
    """Drain the node (through a manager), make it leave, and remove it from the manager's node list.
    manager is another manager of the swarm, or None when the node is the swarm's last manager."""
    info = node.info()
    if info.get("LocalNodeState") not in ("active", "pending", "error"):
        return  # not in a swarm (any more)
    node_id = info["NodeID"]
    is_manager = bool(info.get("ControlAvailable"))
    if is_manager and not force:
        if manager is None:
            others = int(info.get("Nodes") or 1) - 1
            raise ProvisionError(
                f"this is the swarm's last manager ({others} other node(s) would lose their swarm); use -f to remove it"
            )
        if not keeps_quorum_without(manager.nodes(), node_id):
            raise ProvisionError(
                f"removing this manager would break the swarm's quorum ({info.get('Managers')} managers); use -f"
            )
    if manager is not None:
        log("Draining the swarm node...")
        manager.update_node(node_id, Availability="drain")
        deadline = time.monotonic() + drain_timeout
        while manager.tasks_on(node_id) and time.monotonic() < deadline:
            time.sleep(1)
        if is_manager:
            log("Demoting the manager to a worker...")
            manager.update_node(node_id, Role="worker")
            deadline = time.monotonic() + 60
            while node.info().get("ControlAvailable"):  # the node must see itself demoted before it may leave
                if time.monotonic() > deadline:
                    raise ProvisionError("the node is still a manager a minute after its demotion")
                time.sleep(1)
    log("Leaving the swarm...")
    node.leave(force=manager is None)
    if manager is not None:
        deadline = time.monotonic() + 30
        while True:  # the node must be seen down before the manager lets it go without force
            try:
                manager.remove_node(node_id)
                break
            except ProvisionError:
                if time.monotonic() > deadline:
                    manager.remove_node(node_id, force=True)
                    break
                time.sleep(1)
        log("Removed the node from the swarm's node list.")
