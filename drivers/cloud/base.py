"""The shared cloud driver on Apache libcloud: credentials by reference, key pair import, a firewall that
opens only SSH and the engine port, node lifecycle mapped to provider calls, state from the provider.

A provider module subclasses CloudDriver and fills in the hooks (connect, resolve, create_node, ...);
everything that must be the same for every cloud (recording, locking, waiting, errors) lives here.
"""

import abc
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from dockyard.drivers.base import POWER, Driver, Flag, Settings, State, flag_values, setting
from dockyard.drivers.cloud.errors import CloudError, CloudNotFound, translate
from dockyard.provisioner.core import credentials
from dockyard.provisioner.core.errors import DockyardError, DriverError, PreCreateCheckError, SSHTimeout
from dockyard.provisioner.core.files import atomic_write, file_lock

RESOURCES_FILE = "cloud-resources.json"  # written the moment the provider returns an id: rm -f finds it
RUNNING_TIMEOUT = 600.0
SSH_TIMEOUT_ENV = "DOCKYARD_SSH_TIMEOUT"
# Keys copied to RESOURCES_FILE: what exists at the provider on behalf of this machine.
RESOURCE_KEYS = (
    "NodeId",
    "NodeName",
    "ClientToken",
    "CreateRequested",
    "KeyPairName",
    "KeyPairId",
    "FirewallId",
    "FirewallName",
    "FirewallManaged",
    "FloatingIPId",
)

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def common_flags(
    prefix,
    env_prefix,
    ssh_user="root",
    firewall_help=None,
    firewall_default=None,
    endpoint_env=None,
    userdata=True,
    tags=True,
    endpoint=True,
):
    """The flags every cloud driver has, named `--<prefix>-...` with env vars `<env_prefix>...`."""
    flags = [
        Flag(f"{prefix}-ssh-user", "SSH user the image lets in", default=ssh_user, envvar=f"{env_prefix}SSH_USER"),
        Flag(f"{prefix}-ssh-port", "SSH port", default=22, type=int, envvar=f"{env_prefix}SSH_PORT"),
        Flag(
            f"{prefix}-open-port",
            "Extra port to open in the firewall, PORT[/tcp|udp] (repeatable)",
            multiple=True,
            envvar=f"{env_prefix}OPEN_PORT",
        ),
        Flag(
            f"{prefix}-source-cidr",
            "Allow SSH and the engine only from this CIDR (repeatable; default 0.0.0.0/0)",
            default=("0.0.0.0/0",),
            multiple=True,
            envvar=f"{env_prefix}SOURCE_CIDR",
        ),
        Flag(
            f"{prefix}-account",
            "Name of the stored credentials to use or save (dockyard creds ls)",
            default="default",
            envvar=f"{env_prefix}ACCOUNT",
        ),
        Flag(
            f"{prefix}-ssh-timeout",
            "Seconds to wait for SSH once the node runs",
            default=120,
            type=int,
            envvar=SSH_TIMEOUT_ENV,
        ),
    ]
    if endpoint:
        flags.append(
            Flag(
                f"{prefix}-endpoint",
                "API endpoint URL (private clouds, tests)",
                envvar=endpoint_env or f"{env_prefix}ENDPOINT",
            )
        )
    if firewall_help:
        flags.append(
            Flag(f"{prefix}-firewall", firewall_help, default=firewall_default, envvar=f"{env_prefix}FIREWALL")
        )
    if userdata:
        flags.append(Flag(f"{prefix}-userdata", "Path of a cloud-init user-data file", envvar=f"{env_prefix}USERDATA"))
    if tags:
        flags.append(
            Flag(
                f"{prefix}-tags",
                "Tags, comma separated (key1,value1,key2,value2 where the provider has key/value tags)",
                envvar=f"{env_prefix}TAGS",
            )
        )
    return flags


def parse_ports(values):
    """["8080", "53/udp"] -> [(8080, "tcp"), (53, "udp")]."""
    out = []
    for v in values or ():
        for item in str(v).split(","):
            item = item.strip()
            if not item:
                continue
            port, _, proto = item.partition("/")
            proto = (proto or "tcp").lower()
            if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("tcp", "udp"):
                raise DriverError(f'invalid port "{item}": expected PORT[/tcp|udp]')
            out.append((int(port), proto))
    return out


def parse_endpoint(url):
    """(secure, host, port, path) of an endpoint URL; path is "" when absent."""
    if not url:
        return None
    parts = urlsplit(url if "://" in url else "https://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DriverError(f'invalid endpoint "{url}": expected http(s)://HOST[:PORT][/PATH]')
    secure = parts.scheme == "https"
    return secure, parts.hostname, parts.port or (443 if secure else 80), parts.path.rstrip("/")


def json_body(conn, data):
    """data as the request body for conn's connection: left as is for connections whose (public) encode_data
    JSON-encodes bodies itself (Azure, Google), JSON text for the others, which send bodies as given."""
    if data is None:
        return None
    return data if isinstance(conn.connection.encode_data(data), (str, bytes)) else json.dumps(data)


def key_value_tags(text):
    """Docker Machine's "k1,v1,k2,v2" tag list as a dict."""
    if not text:
        return {}
    items = [t.strip() for t in text.split(",")]
    if len(items) % 2:
        raise DriverError(f'invalid tags "{text}": expected key1,value1,key2,value2')
    return dict(zip(items[::2], items[1::2], strict=True))


def list_tags(text):
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@dataclasses.dataclass
class CloudSettings(Settings):
    """What every cloud driver records from the common flags (flag keys without the `<driver>_` prefix)."""

    provider: str = setting("Provider")
    ssh_user: str = setting("SSHUser", flag="ssh_user")
    ssh_port: int = setting("SSHPort", flag="ssh_port")
    open_ports: list[str] = setting("OpenPorts", flag="open_port")
    source_cidrs: list[str] = setting("SourceCIDRs", flag="source_cidr")
    endpoint: str = setting("Endpoint", flag="endpoint")
    account: str = setting("Account", flag="account")
    ssh_timeout: int = setting("SSHTimeout", flag="ssh_timeout")
    firewall_name: str = setting("FirewallName", flag="firewall")
    tags: str = setting("Tags", flag="tags")
    user_data_file: str = setting("UserDataFile", flag="userdata")

    def __post_init__(self) -> None:
        self.ssh_port, self.ssh_timeout = int(self.ssh_port), int(self.ssh_timeout)
        self.open_ports = [f"{p}/{proto}" for p, proto in parse_ports(self.open_ports)]
        self.endpoint, self.firewall_name, self.tags = self.endpoint or "", self.firewall_name or "", self.tags or ""
        path = self.user_data_file
        self.user_data_file = os.path.abspath(os.path.expanduser(path)) if path else ""
        parse_endpoint(self.endpoint)  # fail early on a bad URL


class CloudDriver(Driver):
    """Base of the libcloud drivers. Subclasses set name, flags, credential_fields and the hooks below."""

    name = "cloud"
    capabilities = POWER
    credential_fields: list = []  # provisioner.credentials.Field
    # The firewall of drivers without a --<name>-firewall flag (amazonec2 names its security group itself).
    unflagged_firewall = "dockyard"
    poll_interval = 1.0
    imports_key = True  # False: the public key goes into the create call itself (self.public_key)
    endpoint_is_api = True  # False where the endpoint flag names something else (OpenStack's auth URL)
    late_address = False  # True: the public address comes in after_running (floating IP)

    def __init__(self, machine_name, machine_dir, config=None, progress=None):
        super().__init__(machine_name, machine_dir, config, progress)
        self._conn = None
        self._secrets = None
        self._save_to = None  # a credentials store to save flag-given secrets to, once they work
        self._resolved = None
        self.public_key = None
        # A create killed before config.json was saved leaves its ids here.
        try:
            with open(self.path(RESOURCES_FILE)) as f:
                for k, v in json.load(f).items():
                    self.config.setdefault(k, v)
        except (OSError, ValueError):
            pass

    # -- flags ------------------------------------------------------------------------------------
    @property
    def firewall_default(self) -> str:
        """The firewall name used when none is given: the --<name>-firewall flag's default."""
        key = f"{self.name}_firewall"
        return next((f.default for f in self.flags if f.key == key), self.unflagged_firewall)

    def flag_values(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """This driver's flag values, defaults applied; the keys of flags it lacks hold None."""
        values = flag_values(self.flags, options)
        for f in CloudSettings.__dataclass_fields__.values():
            if f.metadata.get("flag"):
                values.setdefault(f"{self.name}_{f.metadata['flag']}", None)
        if values[f"{self.name}_firewall"] is None:
            values[f"{self.name}_firewall"] = self.firewall_default
        return values

    def set_config_from_flags(self, options):
        values = self.flag_values(options)
        self.config.update(CloudSettings.from_flags(values, prefix=f"{self.name}_", provider=self.name).to_config())
        given = {f.name: options.get(f.flag_key) for f in self.credential_fields if f.flag_key}
        self._credential_choice = given
        self.configure(options)

    def configure(self, options):
        """Provider flags into self.config (hook)."""

    # -- credentials ---------------------------------------------------------------------------------
    @property
    def credential_provider(self):
        """The provider part of credential references ("amazonec2" in "amazonec2:default")."""
        return self.name

    def secrets(self):
        if self._secrets is None:
            if not self.credential_fields:
                self._secrets = {}
            else:
                self._secrets = credentials.resolve(self.config, self.credential_provider, self.credential_fields)
        return self._secrets

    def _choose_credentials(self):
        if not self.credential_fields:
            self._secrets = {}
            return
        source, values, store = credentials.choose(
            self.credential_provider,
            self.config.get("Account") or "default",
            self.credential_fields,
            getattr(self, "_credential_choice", {}) or {},
        )
        file_path = store.path if store is not None and store.kind == "file" else credentials.file_path_from_env()
        self.config.update(
            credentials.reference(source, self.credential_provider, self.config.get("Account"), file_path)
        )
        self._secrets = values
        self._save_to = store

    # -- connection and errors --------------------------------------------------------------------------
    @contextlib.contextmanager
    def api(self, what):
        """Provider exceptions -> one-line DriverErrors."""
        try:
            yield
        except DockyardError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise translate(self.name, what, e) from None

    def conn(self):
        if self._conn is None:
            secrets = self.secrets()
            endpoint = parse_endpoint(self.config.get("Endpoint"))
            with self.api("connecting"):
                conn = self.connect(secrets, endpoint)
                if endpoint and self.endpoint_is_api:
                    self.point_at(conn, endpoint)
            self._conn = conn
        return self._conn

    def point_at(self, conn, endpoint):
        """Make sure every request goes to the endpoint override (some libcloud drivers ignore host/port)."""
        secure, host, port, _path = endpoint
        c = conn.connection
        if (c.host, int(c.port), bool(c.secure)) != (host, port, secure):
            c.host, c.port, c.secure = host, port, secure
            c.connect()
        if (c.host, int(c.port)) != (host, port):
            raise DriverError(f"{self.name}: cannot direct the API client to {self.config['Endpoint']}")

    def rest(self, conn, what, path, method="GET", data=None, params=None):
        """A JSON request through the libcloud connection (its auth, host and errors); returns the object."""
        with self.api(what):
            return conn.connection.request(path, params=params or {}, data=json_body(conn, data), method=method).object

    def endpoint_kwargs(self, endpoint):
        """libcloud's usual host/port/secure constructor arguments for an endpoint override."""
        if not endpoint:
            return {}
        secure, host, port, _path = endpoint
        return {"secure": secure, "host": host, "port": port}

    # -- hooks a provider fills in -----------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self, secrets, endpoint):
        """The provider's libcloud driver object, authenticated with secrets (and the endpoint override)."""

    def check_access(self, conn):
        """A cheap authenticated call, so bad credentials fail the pre-create check."""
        conn.list_key_pairs()

    def resolve(self, conn):
        """Look up size/image/location objects; returns a dict handed to create_node."""
        return {}

    def ensure_firewall(self, conn):
        """Create or reuse the shared firewall; set FirewallId, and FirewallManaged when dockyard made it."""

    def release_firewall(self, conn):
        """Delete the shared firewall if this machine created it and nothing uses it any more (best effort)."""

    def import_key(self, conn, name, public_key):
        """Upload the public key; returns the provider's id for it (or the name)."""
        with self.api("importing the SSH key pair"):
            kp = conn.import_key_pair_from_string(name, public_key)
        return getattr(kp, "extra", {}).get("id") or kp.name

    def delete_key(self, conn):
        name = self.config.get("KeyPairName")
        with self.api("deleting the SSH key pair"):
            for kp in conn.list_key_pairs():
                if kp.name == name:
                    conn.delete_key_pair(kp)

    @abc.abstractmethod
    def create_node(self, conn, resolved, user_data):
        """Ask the provider for the node; returns libcloud's Node."""

    def after_running(self, conn, node):
        """Hook: finish a running node (e.g. attach a floating IP); returns the node."""
        return node

    def get_node(self, conn):
        """The node, or None when the provider no longer has it."""
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        with self.api("looking up the node"):
            for node in conn.list_nodes():
                if str(node.id) == str(node_id):
                    return node
        return None

    def find_orphan(self, conn):
        """A node whose create call went out but whose id was never recorded (found by its unique name)."""
        name = self.config.get("NodeName")
        if not name:
            return None
        with self.api("looking for a half-created node"):
            for node in conn.list_nodes():
                if node.name == name:
                    return node
        return None

    def destroy_node(self, conn, node):
        with self.api("deleting the node"):
            conn.destroy_node(node)

    def start_node(self, conn, node):
        with self.api("starting the node"):
            conn.start_node(node)

    def stop_node(self, conn, node):
        with self.api("stopping the node"):
            conn.stop_node(node)

    def kill_node(self, conn, node):
        self.stop_node(conn, node)

    def reboot_node(self, conn, node):
        with self.api("rebooting the node"):
            conn.reboot_node(node)

    def addresses(self, node):
        """(public, private) addresses of a node; either may be None."""
        public = next((a for a in node.public_ips or [] if a and ":" not in a), None)
        private = next((a for a in node.private_ips or [] if a and ":" not in a), None)
        return public, private

    # -- recording --------------------------------------------------------------------------------------
    def record(self, **values):
        """Set values in the config and write the resource ids next to config.json at once."""
        self.config.update(values)
        data = {k: self.config[k] for k in RESOURCE_KEYS if self.config.get(k) not in (None, "", [], {})}
        if os.path.isdir(self.machine_dir):
            atomic_write(self.path(RESOURCES_FILE), json.dumps(data, indent=2) + "\n", durable=True)

    # -- shared objects across threads and processes -------------------------------------------------------
    def lock_scope(self):
        return self.config.get("Endpoint") or self.config.get("Region") or "global"

    @contextlib.contextmanager
    def shared_lock(self):
        """Serialize creating shared cloud objects: a thread lock plus a file lock in the store."""
        scope = f"{self.name}-{hashlib.sha256(self.lock_scope().encode()).hexdigest()[:12]}"
        with _thread_locks_guard:
            tlock = _thread_locks.setdefault(scope, threading.Lock())
        store_root = os.path.dirname(os.path.dirname(os.path.abspath(self.machine_dir)))
        with (
            tlock,
            file_lock(
                os.path.join(store_root, f".cloud-{scope}.lock"), timeout=300, what=f"{self.name} shared objects"
            ),
        ):
            yield

    def key_pair_name(self, public_key):
        # The key's digest makes the name unique per machine key: no clash between stores or retries.
        digest = hashlib.sha256(public_key.split()[1].encode()).hexdigest()[:8]
        return f"dockyard-{self.machine_name}-{digest}"

    def node_name(self):
        return self.machine_name

    def ports(self):
        """(port, proto) pairs the firewall opens: SSH, the engine and --open-port values."""
        out = [(self.ssh_port(), "tcp"), (self.engine_port(), "tcp")]
        for p in parse_ports(self.config.get("OpenPorts")):
            if p not in out:
                out.append(p)
        return out

    def user_data(self):
        path = self.config.get("UserDataFile")
        if not path:
            return None
        try:
            with open(path) as f:
                return f.read()
        except OSError as e:
            raise DriverError(f"cannot read user data file {path}: {e.strerror}") from None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def pre_create_check(self):
        try:
            self._choose_credentials()
            if self.config.get("UserDataFile"):
                self.user_data()
            conn = self.conn()
            with self.api("checking the credentials"):
                self.check_access(conn)
            self._resolved = self.resolve(conn)
        except DockyardError as e:
            raise PreCreateCheckError(str(e)) from None
        if self._save_to is not None:
            # Only now that they work: keep them where the user asked (keyring or opt-in file).
            ref = credentials.make_ref(self.credential_provider, self.config.get("Account"))
            self._save_to.set(ref, self._secrets)

    def create(self):
        public = self.public_key = self.ensure_ssh_key()
        conn = self.conn()
        resolved = self._resolved if self._resolved is not None else self.resolve(conn)
        user_data = self.user_data()
        with self.shared_lock():
            self.ensure_firewall(conn)
            self.record()
            if self.imports_key:
                name = self.key_pair_name(public)
                self.record(KeyPairName=name)
                key_id = self.import_key(conn, name, public)
                self.record(KeyPairId=str(key_id))
        self.record(NodeName=self.node_name(), CreateRequested=True)
        node = self.create_node(conn, resolved, user_data)
        self.record(NodeId=str(node.id))
        node = self.wait_for_state(conn, State.RUNNING, need_address=not self.late_address)
        node = self.after_running(conn, node)
        self.update_addresses(node)
        self.wait_for_ssh_port()

    def update_addresses(self, node):
        public, private = self.addresses(node)
        self.config["PrivateIPAddress"] = private or ""
        self.config["IPAddress"] = public or ""

    def ip(self):
        if self.config.get("UsePrivateAddress") or not self.config.get("IPAddress"):
            if self.config.get("PrivateIPAddress"):
                return self.config["PrivateIPAddress"]
        if self.config.get("IPAddress"):
            return self.config["IPAddress"]
        raise DriverError(f'{self.name}: machine "{self.machine_name}" has no IP address yet')

    def node(self):
        node = self.get_node(self.conn())
        if node is None:
            raise CloudNotFound(
                f"{self.name}: node {self.config.get('NodeId') or '?'} of machine "
                f'"{self.machine_name}" no longer exists at the provider'
            )
        return node

    def map_state(self, node):
        from libcloud.compute.types import NodeState

        s = node.state
        return {
            NodeState.RUNNING: State.RUNNING,
            NodeState.STOPPED: State.STOPPED,
            NodeState.STOPPING: State.STOPPING,
            NodeState.PENDING: State.STARTING,
            NodeState.STARTING: State.STARTING,
            NodeState.REBOOTING: State.STARTING,
            NodeState.SUSPENDED: State.PAUSED,
            NodeState.PAUSED: State.PAUSED,
            NodeState.TERMINATED: State.ERROR,
            NodeState.ERROR: State.ERROR,
        }.get(s, State.NONE)

    def state(self):
        if not self.config.get("NodeId"):
            return State.NONE
        node = self.get_node(self.conn())
        return State.ERROR if node is None else self.map_state(node)

    def wait_for_state(self, conn, want, need_address=False, timeout=RUNNING_TIMEOUT):
        deadline = time.monotonic() + timeout
        delay = self.poll_interval / 4
        last = "unknown"
        while True:
            node = self.get_node(conn)
            if node is None:
                raise CloudNotFound(
                    f"{self.name}: node {self.config.get('NodeId')} disappeared while waiting "
                    f"for it to be {want.value.lower()}"
                )
            st = self.map_state(node)
            last = st.value or str(node.state)
            if st == want and (not need_address or any(self.addresses(node))):
                return node
            if st == State.ERROR:
                raise CloudError(
                    f"{self.name}: node {node.id} is in state {node.state} "
                    f"while waiting for it to be {want.value.lower()}"
                )
            if time.monotonic() > deadline:
                raise CloudError(
                    f"{self.name}: node {node.id} not {want.value.lower()} after {timeout:.0f}s (state {last})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def wait_for_ssh_port(self):
        """Wait until the SSH port answers with a banner; the provider's address may be unreachable."""
        timeout = float(self.config.get("SSHTimeout") or 120)
        host, port = self.ip(), self.ssh_port()
        deadline = time.monotonic() + timeout
        last = "no attempt finished"
        delay = 0.2
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(
                    (host, port), timeout=max(1.0, min(10.0, deadline - time.monotonic()))
                ) as s:
                    s.settimeout(max(1.0, min(10.0, deadline - time.monotonic())))
                    if s.recv(4).startswith(b"SSH-"):
                        return
                    last = "no SSH banner"
            except OSError as e:
                last = e.strerror or str(e) or type(e).__name__
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 3.0)
        hint = ""
        if not self.config.get("UsePrivateAddress") and self.config.get("PrivateIPAddress"):
            hint = f" (from inside the cloud network, --{self.name}-use-private-address may help)"
        raise SSHTimeout(f"{self.name}: timed out after {timeout:g}s waiting for SSH on {host}:{port}: {last}{hint}")

    def start(self):
        conn = self.conn()
        self.start_node(conn, self.node())
        self.update_addresses(self.wait_for_state(conn, State.RUNNING, need_address=True))

    def stop(self):
        conn = self.conn()
        self.stop_node(conn, self.node())
        self.wait_for_state(conn, State.STOPPED)

    def kill(self):
        conn = self.conn()
        self.kill_node(conn, self.node())
        self.wait_for_state(conn, State.STOPPED)

    def restart(self):
        conn = self.conn()
        self.reboot_node(conn, self.node())
        self.update_addresses(self.wait_for_state(conn, State.RUNNING, need_address=True))

    def remove(self):
        """Delete the node, the imported key pair and an unused firewall this machine made. Idempotent."""
        if not any(self.config.get(k) for k in ("NodeId", "CreateRequested", "KeyPairName", "FirewallManaged")):
            return  # nothing was ever made at the provider
        conn = self.conn()
        node = self.get_node(conn)
        if node is None and not self.config.get("NodeId") and self.config.get("CreateRequested"):
            node = self.find_orphan(conn)
        if node is not None:
            self.destroy_node(conn, node)
            self.wait_gone(conn, node)
        self.record(NodeId="", CreateRequested=False)
        if self.config.get("KeyPairName"):
            self.delete_key(conn)
            self.record(KeyPairName="", KeyPairId="")
        if self.config.get("FirewallManaged"):
            with self.shared_lock():
                self.release_firewall(conn)

    def wait_gone(self, conn, node, timeout=RUNNING_TIMEOUT):
        """Hook: wait until a deleted node no longer holds shared objects (default: do not wait)."""
