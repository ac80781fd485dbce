"""The `vultr` driver: a Vultr instance, an uploaded SSH key, and a firewall group."""

import base64
import dataclasses

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags, list_tags
from dockyard.drivers.cloud.errors import CloudNotFound
from dockyard.provisioner.core.credentials import Field

DEFAULT_OS = "Ubuntu 24.04 LTS x64"


@dataclasses.dataclass
class VultrSettings(Settings):
    """The instance's settings (flag keys without the `vultr_` prefix)."""

    region: str = setting("Region", flag="region")
    plan: str = setting("Plan", flag="plan")
    os: str = setting("OS", flag="os")
    ipv6: bool = setting("IPv6", flag="ipv6")
    private_network: bool = setting("PrivateNetwork", flag="private_network")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_private_address")
    backups: bool = setting("Backups", flag="backups")

    def __post_init__(self) -> None:
        self.os = str(self.os)  # a numeric id stays a string in config.json
        # The private address exists only on the VPC.
        self.private_network = self.private_network or self.use_private_address


class VultrDriver(CloudDriver):
    name = "vultr"
    credential_fields = [Field("api_key", "VULTR_API_KEY", "vultr_api_key")]
    flags = [
        Flag("vultr-api-key", "API key", envvar="VULTR_API_KEY"),
        Flag("vultr-region", "Region id", default="ewr", envvar="VULTR_REGION"),
        Flag("vultr-plan", "Plan id", default="vc2-1c-1gb", envvar="VULTR_PLAN"),
        Flag("vultr-os", "Operating system: name or numeric id", default=DEFAULT_OS, envvar="VULTR_OS"),
        Flag("vultr-ipv6", "Enable IPv6", is_flag=True, envvar="VULTR_IPV6"),
        Flag("vultr-private-network", "Attach to the region's VPC", is_flag=True, envvar="VULTR_PRIVATE_NETWORK"),
        Flag(
            "vultr-use-private-address",
            "Reach the machine by its VPC address",
            is_flag=True,
            envvar="VULTR_USE_PRIVATE_ADDRESS",
        ),
        Flag("vultr-backups", "Enable automatic backups", is_flag=True, envvar="VULTR_BACKUPS"),
    ] + common_flags(
        "vultr",
        "VULTR_",
        ssh_user="root",
        firewall_help="Firewall group (description) to create or reuse",
        firewall_default="dockyard",
    )

    def configure(self, options):
        self.config.update(VultrSettings.from_flags(self.flag_values(options), prefix="vultr_").to_config())

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.vultr import VultrNodeDriverV2

        return VultrNodeDriverV2(secrets["api_key"], **self.endpoint_kwargs(endpoint))

    def check_access(self, conn):
        self.rest(conn, "checking the credentials", "/v2/account")

    def _all(self, conn, what, path, key):
        return self.rest(conn, f"listing {what}", path, params={"per_page": 500})[key]

    def resolve(self, conn):
        if self.config["Region"] not in {r["id"] for r in self._all(conn, "regions", "/v2/regions", "regions")}:
            raise CloudNotFound(f'{self.name}: unknown region "{self.config["Region"]}"')
        if self.config["Plan"] not in {p["id"] for p in self._all(conn, "plans", "/v2/plans", "plans")}:
            raise CloudNotFound(f'{self.name}: unknown plan "{self.config["Plan"]}"')
        os_list = self._all(conn, "operating systems", "/v2/os", "os")
        want = self.config["OS"]
        match = next((o for o in os_list if str(o["id"]) == want or o["name"] == want), None)
        if match is None:
            raise CloudNotFound(f'{self.name}: unknown operating system "{want}"')
        self.config["OSId"] = match["id"]
        return {}

    # -- firewall group ---------------------------------------------------------------------------------------
    def ensure_firewall(self, conn):
        name = self.config["FirewallName"]
        if not name:
            return
        groups = self._all(conn, "firewall groups", "/v2/firewalls", "firewall_groups")
        group = next((g for g in groups if g.get("description") == name), None)
        if group is None:
            group = self.rest(
                conn, f'creating firewall group "{name}"', "/v2/firewalls", "POST", {"description": name}
            )["firewall_group"]
            self.record(FirewallManaged=True)
        self.record(FirewallId=group["id"])
        rules = self.rest(
            conn, "listing firewall rules", f"/v2/firewalls/{group['id']}/rules", params={"per_page": 500}
        )["firewall_rules"]
        have = {(r["protocol"], str(r["port"]), f"{r['subnet']}/{r['subnet_size']}") for r in rules}
        for port, proto in self.ports():
            for cidr in self.config["SourceCIDRs"]:
                if (proto, str(port), cidr) in have:
                    continue
                subnet, _, size = cidr.partition("/")
                self.rest(
                    conn,
                    f'adding a rule to firewall group "{name}"',
                    f"/v2/firewalls/{group['id']}/rules",
                    "POST",
                    {
                        "ip_type": "v4",
                        "protocol": proto,
                        "subnet": subnet,
                        "subnet_size": int(size or 32),
                        "port": str(port),
                        "notes": "dockyard",
                    },
                )

    def release_firewall(self, conn):
        group_id = self.config.get("FirewallId")
        if not group_id:
            return
        group = self.rest(conn, "checking whether the firewall group is still used", f"/v2/firewalls/{group_id}")[
            "firewall_group"
        ]
        if int(group.get("instance_count") or 0) > 0:
            return
        self.rest(conn, "deleting the firewall group", f"/v2/firewalls/{group_id}", "DELETE")
        self.record(FirewallId="", FirewallManaged=False)

    # -- instance -----------------------------------------------------------------------------------------------
    def create_node(self, conn, resolved, user_data):
        body = {
            "region": self.config["Region"],
            "plan": self.config["Plan"],
            "os_id": int(self.config["OSId"]),
            "label": self.node_name(),
            "hostname": self.node_name(),
            "sshkey_id": [self.config["KeyPairId"]],
            "enable_ipv6": self.config["IPv6"],
            "tags": list_tags(self.config["Tags"]),
            "backups": "enabled" if self.config["Backups"] else "disabled",
        }
        if self.config["PrivateNetwork"]:
            body["enable_vpc"] = True
        if self.config.get("FirewallId"):
            body["firewall_group_id"] = self.config["FirewallId"]
        if user_data:
            body["user_data"] = base64.b64encode(user_data.encode()).decode()
        data = self.rest(conn, "creating the instance", "/v2/instances", "POST", body)["instance"]
        self.record(NodeId=data["id"])
        with self.api("reading the new instance"):
            return conn.ex_get_node(data["id"])

    def get_node(self, conn):
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        try:
            with self.api("looking up the instance"):
                return conn.ex_get_node(node_id)
        except CloudNotFound:
            return None

    def find_orphan(self, conn):
        with self.api("looking for a half-created instance"):
            # Instances only: a bare-metal server is never one of ours.
            nodes = conn.list_nodes(ex_list_bare_metals=False)
        return next((n for n in nodes if n.name == self.node_name()), None)

    def addresses(self, node):
        public, private = super().addresses(node)
        return (None if public == "0.0.0.0" else public), private  # the address is "0.0.0.0" until assigned

    def start_node(self, conn, node):
        self.rest(conn, "starting the instance", f"/v2/instances/{node.id}/start", "POST", {})

    def stop_node(self, conn, node):
        self.rest(conn, "halting the instance", "/v2/instances/halt", "POST", {"instance_ids": [node.id]})

    def reboot_node(self, conn, node):
        self.rest(conn, "rebooting the instance", f"/v2/instances/{node.id}/reboot", "POST", {})

    def destroy_node(self, conn, node):
        self.rest(conn, "deleting the instance", f"/v2/instances/{node.id}", "DELETE")
