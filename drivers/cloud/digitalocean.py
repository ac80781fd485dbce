"""The `digitalocean` driver: a droplet, an uploaded SSH key, and a cloud firewall applied by tag."""

import dataclasses
import re

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags, list_tags
from dockyard.drivers.cloud.errors import CloudNotFound
from dockyard.provisioner.core.credentials import Field


@dataclasses.dataclass
class DigitalOceanSettings(Settings):
    """The droplet's settings (flag keys without the `digitalocean_` prefix)."""

    region: str = setting("Region", flag="region")
    size: str = setting("Size", flag="size")
    image: str = setting("Image", flag="image")
    ipv6: bool = setting("IPv6", flag="ipv6")
    private_networking: bool = setting("PrivateNetworking", flag="private_networking")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_private_address")
    backups: bool = setting("Backups", flag="backups")
    monitoring: bool = setting("Monitoring", flag="monitoring")

    def __post_init__(self) -> None:
        # The private address exists only with private networking.
        self.private_networking = self.private_networking or self.use_private_address


class DigitalOceanDriver(CloudDriver):
    name = "digitalocean"
    credential_fields = [Field("access_token", "DIGITALOCEAN_ACCESS_TOKEN", "digitalocean_access_token")]
    flags = [
        Flag("digitalocean-access-token", "API access token", envvar="DIGITALOCEAN_ACCESS_TOKEN"),
        Flag("digitalocean-region", "Region slug", default="nyc3", envvar="DIGITALOCEAN_REGION"),
        Flag("digitalocean-size", "Droplet size slug", default="s-1vcpu-1gb", envvar="DIGITALOCEAN_SIZE"),
        Flag("digitalocean-image", "Image slug or id", default="ubuntu-24-04-x64", envvar="DIGITALOCEAN_IMAGE"),
        Flag("digitalocean-ipv6", "Enable IPv6", is_flag=True, envvar="DIGITALOCEAN_IPV6"),
        Flag(
            "digitalocean-private-networking",
            "Enable private networking (VPC address)",
            is_flag=True,
            envvar="DIGITALOCEAN_PRIVATE_NETWORKING",
        ),
        Flag(
            "digitalocean-use-private-address",
            "Reach the droplet by its private address",
            is_flag=True,
            envvar="DIGITALOCEAN_USE_PRIVATE_ADDRESS",
        ),
        Flag("digitalocean-backups", "Enable backups", is_flag=True, envvar="DIGITALOCEAN_BACKUPS"),
        Flag("digitalocean-monitoring", "Enable the monitoring agent", is_flag=True, envvar="DIGITALOCEAN_MONITORING"),
    ] + common_flags(
        "digitalocean",
        "DIGITALOCEAN_",
        ssh_user="root",
        firewall_help="Cloud firewall to create or reuse (applied to droplets by a tag of the same name)",
        firewall_default="dockyard",
    )

    def configure(self, options):
        settings = DigitalOceanSettings.from_flags(self.flag_values(options), prefix="digitalocean_")
        self.config.update(settings.to_config())

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.digitalocean import DigitalOceanNodeDriver

        # The version-picking class makes the v2 driver. No host/port keywords: its __new__ hands them on to
        # object.__new__, which refuses them; point_at applies an endpoint override to the connection instead.
        return DigitalOceanNodeDriver(secrets["access_token"], api_version="v2")

    def resolve(self, conn):
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        with self.api("checking the region"):
            regions = {loc.id for loc in conn.list_locations()}
        if self.config["Region"] not in regions:
            raise CloudNotFound(
                f'{self.name}: unknown region "{self.config["Region"]}" (available: {", ".join(sorted(regions))})'
            )
        with self.api("checking the size"):
            sizes = {s.name for s in conn.list_sizes()}
        if self.config["Size"] not in sizes:
            raise CloudNotFound(f'{self.name}: unknown size "{self.config["Size"]}"')
        image = self.config["Image"]
        self.rest(conn, f'finding image "{image}"', f"/v2/images/{image}")
        return {
            "size": NodeSize(self.config["Size"], self.config["Size"], None, None, None, None, conn),
            "image": NodeImage(image, image, conn),
            "location": NodeLocation(self.config["Region"], self.config["Region"], "", conn),
        }

    # -- firewall (applied through a droplet tag, so attaching never races) --------------------------------
    def firewall_tag(self):
        return re.sub(r"[^a-zA-Z0-9_:\-]", "-", self.config["FirewallName"])

    def _rules(self):
        cidrs = self.config["SourceCIDRs"]
        return [
            {"protocol": proto, "ports": str(port), "sources": {"addresses": cidrs}} for port, proto in self.ports()
        ]

    def ensure_firewall(self, conn):
        name = self.config["FirewallName"]
        if not name:
            return
        firewalls = self.rest(conn, "listing firewalls", "/v2/firewalls", params={"per_page": 200})["firewalls"]
        fw = next((f for f in firewalls if f["name"] == name), None)
        if fw is None:
            everywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
            body = {
                "name": name,
                "tags": [self.firewall_tag()],
                "inbound_rules": self._rules(),
                "outbound_rules": [
                    {"protocol": p, "ports": "all" if p != "icmp" else None, "destinations": everywhere}
                    for p in ("tcp", "udp", "icmp")
                ],
            }
            for rule in body["outbound_rules"]:
                if rule["ports"] is None:
                    del rule["ports"]
            fw = self.rest(conn, f'creating firewall "{name}"', "/v2/firewalls", "POST", body)["firewall"]
            self.record(FirewallId=fw["id"], FirewallManaged=True)
            return
        have = {
            (r["protocol"], r["ports"], a)
            for r in fw.get("inbound_rules", [])
            for a in r.get("sources", {}).get("addresses", [])
        }
        missing = [
            r
            for r in self._rules()
            if any((r["protocol"], r["ports"], a) not in have for a in r["sources"]["addresses"])
        ]
        if missing:
            self.rest(
                conn,
                f'adding rules to firewall "{name}"',
                f"/v2/firewalls/{fw['id']}/rules",
                "POST",
                {"inbound_rules": missing},
            )
        if self.firewall_tag() not in fw.get("tags", []):
            self.rest(
                conn,
                f'tagging firewall "{name}"',
                f"/v2/firewalls/{fw['id']}/tags",
                "POST",
                {"tags": [self.firewall_tag()]},
            )
        self.record(FirewallId=fw["id"], FirewallManaged=fw.get("name") == self.firewall_default)

    def release_firewall(self, conn):
        fw_id = self.config.get("FirewallId")
        if not fw_id:
            return
        droplets = self.rest(
            conn,
            "checking whether the firewall is still used",
            "/v2/droplets",
            params={"tag_name": self.firewall_tag()},
        )["droplets"]
        if any(str(d["id"]) != str(self.config.get("NodeId")) for d in droplets):
            return
        self.rest(conn, "deleting the firewall", f"/v2/firewalls/{fw_id}", "DELETE")
        self.record(FirewallId="", FirewallManaged=False)

    # -- key ------------------------------------------------------------------------------------------------
    def import_key(self, conn, name, public_key):
        with self.api("uploading the SSH key"):
            return conn.create_key_pair(name, public_key).extra["id"]

    def delete_key(self, conn):
        key_id = self.config.get("KeyPairId")
        if key_id:
            try:
                self.rest(conn, "deleting the SSH key", f"/v2/account/keys/{key_id}", "DELETE")
            except CloudNotFound:
                pass

    # -- droplet ----------------------------------------------------------------------------------------------
    def create_node(self, conn, resolved, user_data):
        tags = [self.firewall_tag()] if self.config["FirewallName"] else []
        tags += [t for t in list_tags(self.config["Tags"]) if t not in tags]
        body = {
            "name": self.node_name(),
            "region": self.config["Region"],
            "size": self.config["Size"],
            "image": self.config["Image"],
            "ssh_keys": [int(self.config["KeyPairId"])],
            "tags": tags,
            "ipv6": self.config["IPv6"],
            "private_networking": self.config["PrivateNetworking"],
            "backups": self.config["Backups"],
            "monitoring": self.config["Monitoring"],
        }
        if user_data:
            body["user_data"] = user_data
        data = self.rest(conn, "creating the droplet", "/v2/droplets", "POST", body)
        self.record(NodeId=str(data["droplet"]["id"]))
        with self.api("reading the new droplet"):
            return conn.ex_get_node_details(self.config["NodeId"])

    def get_node(self, conn):
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        try:
            with self.api("looking up the droplet"):
                return conn.ex_get_node_details(node_id)
        except CloudNotFound:
            return None

    def _action(self, conn, node, kind, what):
        self.rest(conn, what, f"/v2/droplets/{node.id}/actions", "POST", {"type": kind})

    def start_node(self, conn, node):
        self._action(conn, node, "power_on", "powering the droplet on")

    def stop_node(self, conn, node):
        self._action(conn, node, "shutdown", "shutting the droplet down")

    def kill_node(self, conn, node):
        self._action(conn, node, "power_off", "powering the droplet off")

    def reboot_node(self, conn, node):
        self._action(conn, node, "reboot", "rebooting the droplet")

    def destroy_node(self, conn, node):
        self.rest(conn, "deleting the droplet", f"/v2/droplets/{node.id}", "DELETE")
