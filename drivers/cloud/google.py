"""The `google` driver: a Compute Engine instance, the SSH key in instance metadata, and a firewall rule
that targets a network tag."""

import contextlib
import dataclasses
import hashlib
import json
import os
import re

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags, list_tags
from dockyard.drivers.cloud.errors import CloudAuthError, CloudError, CloudNotFound, one_line, translate
from dockyard.provisioner.core.credentials import Field
from dockyard.provisioner.core.errors import DriverError

DEFAULT_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
# libcloud turns a full resource URL into a path on whatever host the connection talks to.
API_BASE = "https://www.googleapis.com/compute/v1/"


def _service_account(value):
    """(client_email, key) from a service account JSON key: the file's content or its path."""
    text = value
    if value and not value.lstrip().startswith("{") and os.path.isfile(os.path.expanduser(value)):
        with open(os.path.expanduser(value)) as f:
            text = f.read()
    try:
        data = json.loads(text)
        return data["client_email"], data
    except (ValueError, KeyError, TypeError):
        raise DriverError(
            "google: the credentials are not a service account JSON key "
            "(GOOGLE_APPLICATION_CREDENTIALS or --google-credentials-file)"
        ) from None


@dataclasses.dataclass
class GoogleSettings(Settings):
    """The instance's settings (flag keys without the `google_` prefix)."""

    project: str = setting("Project", flag="project")
    zone: str = setting("Zone", flag="zone")
    machine_type: str = setting("MachineType", flag="machine_type")
    image: str = setting("Image", flag="machine_image")
    disk_size: int = setting("DiskSize", flag="disk_size")
    disk_type: str = setting("DiskType", flag="disk_type")
    network: str = setting("Network", flag="network")
    subnetwork: str = setting("Subnetwork", flag="subnetwork")
    preemptible: bool = setting("Preemptible", flag="preemptible")
    internal_only: bool = setting("InternalOnly", flag="use_internal_ip_only")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_internal_ip")

    def __post_init__(self) -> None:
        if not self.project:
            raise DriverError("google driver requires --google-project (or GOOGLE_PROJECT)")
        self.disk_size, self.subnetwork = int(self.disk_size), self.subnetwork or ""
        self.use_private_address = self.internal_only or self.use_private_address


class GoogleDriver(CloudDriver):
    name = "google"
    imports_key = False  # the public key goes into the instance metadata (ssh-keys)
    credential_fields = [Field("service_account_json", "GOOGLE_APPLICATION_CREDENTIALS", "google_credentials_file")]
    flags = [
        Flag(
            "google-credentials-file",
            "Service account JSON key file (its content is kept in the keyring)",
            envvar="GOOGLE_APPLICATION_CREDENTIALS",
        ),
        Flag("google-project", "Project id", envvar="GOOGLE_PROJECT"),
        Flag("google-zone", "Zone", default="us-central1-a", envvar="GOOGLE_ZONE"),
        Flag("google-machine-type", "Machine type", default="e2-small", envvar="GOOGLE_MACHINE_TYPE"),
        Flag("google-machine-image", "Image or image family URL", default=DEFAULT_IMAGE, envvar="GOOGLE_MACHINE_IMAGE"),
        Flag("google-disk-size", "Boot disk size in GB", default=20, type=int, envvar="GOOGLE_DISK_SIZE"),
        Flag("google-disk-type", "Boot disk type", default="pd-balanced", envvar="GOOGLE_DISK_TYPE"),
        Flag("google-network", "VPC network", default="default", envvar="GOOGLE_NETWORK"),
        Flag("google-subnetwork", "Subnetwork", envvar="GOOGLE_SUBNETWORK"),
        Flag("google-preemptible", "Preemptible (spot) instance", is_flag=True, envvar="GOOGLE_PREEMPTIBLE"),
        Flag(
            "google-use-internal-ip",
            "Reach the machine by its internal address",
            is_flag=True,
            envvar="GOOGLE_USE_INTERNAL_IP",
        ),
        Flag(
            "google-use-internal-ip-only",
            "No external address at all",
            is_flag=True,
            envvar="GOOGLE_USE_INTERNAL_IP_ONLY",
        ),
        Flag(
            "google-endpoint",
            "API endpoint URL; the OAuth token request goes there too (proxies, tests)",
            envvar="GOOGLE_ENDPOINT",
        ),
    ] + common_flags(
        "google",
        "GOOGLE_",
        ssh_user="docker-user",
        endpoint=False,
        firewall_help="Firewall rule to create or reuse (it targets the network tag of the same name)",
        firewall_default="dockyard-machines",
    )

    def configure(self, options):
        self.config.update(GoogleSettings.from_flags(self.flag_values(options), prefix="google_").to_config())

    def connect(self, secrets, endpoint):
        from libcloud.common.google import GoogleAuthError, GoogleBaseError

        email, key = _service_account(secrets["service_account_json"])
        # libcloud caches the short-lived access token in a file: keep it in the user's cache, mode 0600,
        # one per account and endpoint (a token from a test or proxy endpoint is never offered elsewhere).
        cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dockyard")
        os.makedirs(cache, mode=0o700, exist_ok=True)
        suffix = "-" + hashlib.sha256(self.config["Endpoint"].encode()).hexdigest()[:12] if endpoint else ""
        cls = _gce_driver_class(endpoint is not None)
        try:
            # No datacenter: libcloud would look the zone up before we can say it is unknown.
            return cls(
                email,
                key,
                project=self.config["Project"],
                auth_type="SA",
                credential_file=os.path.join(cache, f"gce-token-{email}{suffix}"),
                **self.endpoint_kwargs(endpoint),
            )
        except (GoogleAuthError, GoogleBaseError) as e:
            # The service account's signed token request was refused (e.g. invalid_grant: a deleted or
            # rotated key): libcloud reports it as a 400, not as refused credentials.
            if isinstance(e, GoogleBaseError) and getattr(e, "http_code", None) not in (400, 401, 403):
                raise translate(self.name, "signing in", e) from None
            raise CloudAuthError(
                f"{self.name}: signing in as {email}: the provider refused the credentials "
                f"({one_line(getattr(e, 'value', None) or e)})"
            ) from None

    @contextlib.contextmanager
    def api(self, what):
        from libcloud.common.google import GoogleBaseError

        with super().api(what):
            try:
                yield
            except GoogleBaseError as e:
                # Google's errors carry {"reason", "message", "domain"}; libcloud keeps the whole dict.
                if isinstance(e.value, dict):
                    e.value = e.value.get("message") or e.value.get("reason") or str(e.value)
                raise

    def check_access(self, conn):
        conn.ex_list_zones()

    def image_request(self):
        """(how, what) to look the image up: ("url", full URL) or ("name", an image name in the project)."""
        image = self.config["Image"]
        if image.startswith("https://"):
            return "url", image
        if image.startswith("projects/"):
            return "url", API_BASE + image
        return "name", image

    def resolve(self, conn):
        with self.api(f'finding zone "{self.config["Zone"]}"'):
            zones = {z.name for z in conn.ex_list_zones()}
        if self.config["Zone"] not in zones:
            raise CloudNotFound(
                f'{self.name}: unknown zone "{self.config["Zone"]}" in project '
                f"{self.config['Project']} (zones: {', '.join(sorted(zones))})"
            )
        with self.api(f'finding machine type "{self.config["MachineType"]}"'):
            size = conn.ex_get_size(self.config["MachineType"], self.config["Zone"])
        how, what = self.image_request()
        with self.api(f'finding image "{self.config["Image"]}"'):
            if how == "url" and "/family/" in what:
                image = conn.ex_get_image_from_family(what)
            else:  # a URL is fetched as such; a bare name is searched in the project and the public ones
                image = conn.ex_get_image(what)
        return {"size": size, "image": image}

    def tag(self):
        return self.config["FirewallName"] or "dockyard-machines"

    def ensure_firewall(self, conn):
        from libcloud.common.google import ResourceNotFoundError

        name = self.config["FirewallName"]
        if not name:
            return
        allowed = {}
        for port, proto in self.ports():
            allowed.setdefault(proto, []).append(str(port))
        with self.api(f'setting up firewall rule "{name}"'):
            try:
                fw = conn.ex_get_firewall(name)
            except ResourceNotFoundError:
                conn.ex_create_firewall(
                    name,
                    allowed=[{"IPProtocol": p, "ports": v} for p, v in allowed.items()],
                    network=self.config["Network"],
                    source_ranges=self.config["SourceCIDRs"],
                    target_tags=[self.tag()],
                    description="dockyard machines",
                )
                self.record(FirewallId=name, FirewallManaged=True)
                return
            have = {(a["IPProtocol"], p) for a in fw.allowed for p in a.get("ports", [])}
            wanted = {(p, port) for p, ports in allowed.items() for port in ports}
            ranges = set(fw.source_ranges or [])
            if not wanted <= have or not set(self.config["SourceCIDRs"]) <= ranges:
                merged = {}
                for proto, port in sorted(have | wanted):
                    merged.setdefault(proto, []).append(port)
                fw.allowed = [{"IPProtocol": p, "ports": v} for p, v in merged.items()]
                fw.source_ranges = sorted(ranges | set(self.config["SourceCIDRs"]))
                conn.ex_update_firewall(fw)
            self.record(FirewallId=name, FirewallManaged=fw.extra.get("description") == "dockyard machines")

    def release_firewall(self, conn):
        with self.api("checking whether the firewall rule is still used"):
            users = [
                n
                for n in conn.list_nodes(ex_zone="all")
                if self.tag() in (n.extra.get("tags") or []) and n.name != self.node_name()
            ]
        if users:
            return
        try:
            with self.api("deleting the firewall rule"):
                conn.ex_destroy_firewall(conn.ex_get_firewall(self.config["FirewallName"]))
        except CloudError:
            return
        self.record(FirewallId="", FirewallManaged=False)

    def create_node(self, conn, resolved, user_data):
        user = self.ssh_user()
        metadata = {"ssh-keys": f"{user}:{self.public_key}"}
        if user_data:
            metadata["user-data"] = user_data
        tags = [self.tag()] + [t for t in list_tags(self.config["Tags"]) if t != self.tag()]
        self.record(NodeId=self.node_name())  # GCE names are the ids within a zone
        with self.api("creating the instance"):
            conn.create_node(
                self.node_name(),
                resolved["size"],
                resolved["image"],
                location=self.config["Zone"],
                ex_network=self.config["Network"],
                ex_subnetwork=self.config["Subnetwork"] or None,
                ex_tags=tags,
                ex_metadata=metadata,
                ex_disk_size=self.config["DiskSize"],
                ex_disk_type=self.config["DiskType"],
                ex_preemptible=self.config["Preemptible"] or None,
                external_ip=None if self.config["InternalOnly"] else "ephemeral",
                ex_labels={"dockyard-machine": self.machine_name.replace(".", "-").lower()},
            )
        return self.get_node(conn)

    def get_node(self, conn):
        from libcloud.common.google import ResourceNotFoundError

        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        # Instances are addressed by name within the zone; NodeId is the name until the provider's numeric id
        # is known, and then guards against another instance that took the name since.
        try:
            with self.api("looking up the instance"):
                node = conn.ex_get_node(self.node_name(), self.config["Zone"])
        except CloudNotFound:
            return None
        except ResourceNotFoundError:
            return None
        return node if str(node_id) in (str(node.id), self.node_name()) else None

    def find_orphan(self, conn):
        self.config["NodeId"] = self.node_name()
        return self.get_node(conn)

    def destroy_node(self, conn, node):
        # The boot disk is created with autoDelete, so it goes with the instance; asking libcloud to delete
        # it as well fails with "not found" once the instance deletion has finished.
        with self.api("deleting the instance"):
            conn.destroy_node(node)

    def node_name(self):
        # Instance names: lowercase letters, digits and dashes, starting with a letter.
        name = re.sub(r"[^a-z0-9-]", "-", self.machine_name.lower())
        return (name if name[:1].isalpha() else "dy-" + name)[:63]


def _gce_driver_class(with_endpoint):
    """libcloud's GCE driver, or (with an endpoint override) one whose connection accepts the host and port
    libcloud's base driver hands over positionally: GCEConnection takes its fourth argument as auth_type,
    so `host=` fails with "multiple values for argument 'auth_type'". Host and port then reach both the API
    connection and the OAuth token connection made from the same keywords."""
    from libcloud.compute.drivers.gce import GCEConnection, GCENodeDriver

    if not with_endpoint:
        return GCENodeDriver

    class EndpointGCEConnection(GCEConnection):
        def __init__(self, user_id, key, secure, host=None, port=None, **kwargs):
            super().__init__(user_id, key, secure, host=host, port=port, **kwargs)

    class EndpointGCENodeDriver(GCENodeDriver):
        connectionCls = EndpointGCEConnection

    return EndpointGCENodeDriver
