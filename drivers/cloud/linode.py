"""The `linode` driver: a Linode instance with the machine's key authorized, behind a Cloud Firewall."""

import base64
import dataclasses
import re
import secrets as pysecrets

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags, list_tags
from dockyard.drivers.cloud.errors import CloudNotFound
from dockyard.provisioner.core.credentials import Field


@dataclasses.dataclass
class LinodeSettings(Settings):
    """The instance's settings (flag keys without the `linode_` prefix)."""

    region: str = setting("Region", flag="region")
    instance_type: str = setting("InstanceType", flag="instance_type")
    image: str = setting("Image", flag="image")
    private_ip: bool = setting("PrivateIP", flag="create_private_ip")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_private_address")

    def __post_init__(self) -> None:
        self.private_ip = self.private_ip or self.use_private_address  # reached by the address it asks for


class LinodeDriver(CloudDriver):
    name = "linode"
    imports_key = False  # the public key goes into the instance's authorized_keys
    credential_fields = [Field("token", "LINODE_TOKEN", "linode_token")]
    flags = [
        Flag("linode-token", "API personal access token", envvar="LINODE_TOKEN"),
        Flag("linode-region", "Region", default="us-east", envvar="LINODE_REGION"),
        Flag("linode-instance-type", "Instance type (plan)", default="g6-nanode-1", envvar="LINODE_INSTANCE_TYPE"),
        Flag("linode-image", "Image", default="linode/ubuntu24.04", envvar="LINODE_IMAGE"),
        Flag("linode-create-private-ip", "Add a private IPv4 address", is_flag=True, envvar="LINODE_CREATE_PRIVATE_IP"),
        Flag(
            "linode-use-private-address",
            "Reach the machine by its private address",
            is_flag=True,
            envvar="LINODE_USE_PRIVATE_ADDRESS",
        ),
    ] + common_flags(
        "linode",
        "LINODE_",
        ssh_user="root",
        firewall_help="Cloud Firewall (label) to create or reuse",
        firewall_default="dockyard",
    )

    def configure(self, options):
        self.config.update(LinodeSettings.from_flags(self.flag_values(options), prefix="linode_").to_config())

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.linode import LinodeNodeDriverV4

        return LinodeNodeDriverV4(secrets["token"], **self.endpoint_kwargs(endpoint))

    def check_access(self, conn):
        self.rest(conn, "checking the credentials", "/v4/profile")

    def resolve(self, conn):
        for what, path, key in (
            ("region", "/v4/regions", "Region"),
            ("instance type", "/v4/linode/types", "InstanceType"),
        ):
            items = self.rest(conn, f"listing {what}s", path, params={"page_size": 500})["data"]
            if self.config[key] not in {i["id"] for i in items}:
                raise CloudNotFound(f'{self.name}: unknown {what} "{self.config[key]}"')
        self.rest(conn, f'finding image "{self.config["Image"]}"', f"/v4/images/{self.config['Image']}")
        return {}

    # -- firewall -----------------------------------------------------------------------------------------
    def _inbound(self):
        return [
            {
                "label": f"dockyard-{proto}-{port}",
                "action": "ACCEPT",
                "protocol": proto.upper(),
                "ports": str(port),
                "addresses": {"ipv4": self.config["SourceCIDRs"]},
            }
            for port, proto in self.ports()
        ]

    def ensure_firewall(self, conn):
        label = self.config["FirewallName"]
        if not label:
            return
        found = self.rest(conn, "listing firewalls", "/v4/networking/firewalls", params={"page_size": 500})["data"]
        fw = next((f for f in found if f["label"] == label), None)
        if fw is None:
            body = {
                "label": label,
                "tags": ["dockyard"],
                "rules": {
                    "inbound_policy": "DROP",
                    "outbound_policy": "ACCEPT",
                    "inbound": self._inbound(),
                    "outbound": [],
                },
            }
            fw = self.rest(conn, f'creating firewall "{label}"', "/v4/networking/firewalls", "POST", body)
            self.record(FirewallId=fw["id"], FirewallManaged=True)
            return
        rules = fw.get("rules") or {}
        have = {
            (r.get("protocol"), r.get("ports"), a)
            for r in rules.get("inbound", [])
            for a in (r.get("addresses") or {}).get("ipv4", [])
        }
        missing = [
            r
            for r in self._inbound()
            if any((r["protocol"], r["ports"], a) not in have for a in r["addresses"]["ipv4"])
        ]
        if missing:
            rules = dict(rules, inbound=list(rules.get("inbound", [])) + missing)
            self.rest(
                conn, f'adding rules to firewall "{label}"', f"/v4/networking/firewalls/{fw['id']}/rules", "PUT", rules
            )
        self.record(FirewallId=fw["id"], FirewallManaged="dockyard" in (fw.get("tags") or []))

    def release_firewall(self, conn):
        fw_id = self.config.get("FirewallId")
        if not fw_id:
            return
        devices = self.rest(
            conn, "checking whether the firewall is still used", f"/v4/networking/firewalls/{fw_id}/devices"
        )["data"]
        if any(str(d.get("entity", {}).get("id")) != str(self.config.get("NodeId")) for d in devices):
            return
        self.rest(conn, "deleting the firewall", f"/v4/networking/firewalls/{fw_id}", "DELETE")
        self.record(FirewallId="", FirewallManaged=False)

    # -- instance ---------------------------------------------------------------------------------------------
    def node_name(self):
        # Labels: 3-64 chars of letters, digits, - _ . starting with a letter, no doubled punctuation.
        label = re.sub(r"[^a-zA-Z0-9_.-]", "-", self.machine_name)
        label = re.sub(r"([-_.])\1+", r"\1", label)
        return (label if label[:1].isalpha() and len(label) >= 3 else "dy-" + label)[:64]

    def create_node(self, conn, resolved, user_data):
        body = {
            "label": self.node_name(),
            "region": self.config["Region"],
            "type": self.config["InstanceType"],
            "image": self.config["Image"],
            "authorized_keys": [self.public_key],
            # Required by the API with an image; never used (SSH keys only) and not kept anywhere.
            "root_pass": pysecrets.token_urlsafe(32),
            "private_ip": self.config["PrivateIP"],
            "tags": list_tags(self.config["Tags"]),
            "booted": True,
        }
        if self.config.get("FirewallId"):
            body["firewall_id"] = int(self.config["FirewallId"])
        if user_data:
            body["metadata"] = {"user_data": base64.b64encode(user_data.encode()).decode()}
        data = self.rest(conn, "creating the instance", "/v4/linode/instances", "POST", body)
        self.record(NodeId=str(data["id"]))
        with self.api("reading the new instance"):
            return conn.ex_get_node(self.config["NodeId"])

    def get_node(self, conn):
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        try:
            with self.api("looking up the instance"):
                return conn.ex_get_node(node_id)
        except CloudNotFound:
            return None

    def _post(self, conn, node, verb, what):
        self.rest(conn, what, f"/v4/linode/instances/{node.id}/{verb}", "POST", {})

    def start_node(self, conn, node):
        self._post(conn, node, "boot", "booting the instance")

    def stop_node(self, conn, node):
        self._post(conn, node, "shutdown", "shutting the instance down")

    def reboot_node(self, conn, node):
        self._post(conn, node, "reboot", "rebooting the instance")

    def destroy_node(self, conn, node):
        self.rest(conn, "deleting the instance", f"/v4/linode/instances/{node.id}", "DELETE")
