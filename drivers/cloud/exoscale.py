"""The `exoscale` driver: an instance through libcloud's Exoscale driver (CloudStack API), with an imported
key pair and a security group.

Exoscale retired that API (its "Compute API v1") on 2024-05-01 and libcloud has no driver for its v2 API, so
against Exoscale itself the pre-create check stops with an explanation before any request is made. An
--exoscale-endpoint naming another CloudStack-compatible API still works.
"""

import dataclasses
from urllib.parse import urlsplit

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags
from dockyard.drivers.cloud.errors import CloudError, CloudNotFound
from dockyard.provisioner.core.credentials import Field
from dockyard.provisioner.core.errors import PreCreateCheckError

EXOSCALE_HOSTS = ("exoscale.com", "exoscale.ch")


def retired_message():
    import libcloud

    return (
        "exoscale: Exoscale retired the CloudStack-compatible API (Compute API v1) on 2024-05-01, and "
        f"libcloud {libcloud.__version__} reaches Exoscale only through that API, so this driver cannot "
        "create machines there. Create the instance with Exoscale's own tools (exo CLI, portal) and add it "
        "with `dockyard create -d generic`; --exoscale-endpoint still works for a CloudStack-compatible API."
    )


class ExoscaleRetired(CloudError):
    """The endpoint is Exoscale's own, whose CloudStack API is gone."""

    def __init__(self):
        super().__init__(retired_message())


def _named(items, name, what, provider, attr="name"):
    for item in items:
        if getattr(item, attr, None) == name or str(getattr(item, "id", "")) == name:
            return item
    raise CloudNotFound(f'{provider}: {what} "{name}" not found')


@dataclasses.dataclass
class ExoscaleSettings(Settings):
    """The instance's settings (flag keys without the `exoscale_` prefix)."""

    zone: str = setting("Zone", flag="availability_zone")
    instance_profile: str = setting("InstanceProfile", flag="instance_profile")
    image: str = setting("Image", flag="image")
    disk_size: int = setting("DiskSize", flag="disk_size")

    def __post_init__(self) -> None:
        self.disk_size = int(self.disk_size)


class ExoscaleDriver(CloudDriver):
    name = "exoscale"
    credential_fields = [
        Field("api_key", "EXOSCALE_API_KEY", "exoscale_api_key"),
        Field("api_secret", "EXOSCALE_API_SECRET", "exoscale_api_secret_key"),
    ]
    flags = [
        Flag(
            "exoscale-api-key",
            "API key (Exoscale itself retired the API this driver speaks; only a "
            "CloudStack-compatible --exoscale-endpoint works)",
            envvar="EXOSCALE_API_KEY",
        ),
        Flag("exoscale-api-secret-key", "API secret", envvar="EXOSCALE_API_SECRET"),
        Flag("exoscale-availability-zone", "Zone", default="ch-gva-2", envvar="EXOSCALE_AVAILABILITY_ZONE"),
        Flag(
            "exoscale-instance-profile",
            "Instance type (service offering)",
            default="Small",
            envvar="EXOSCALE_INSTANCE_PROFILE",
        ),
        Flag("exoscale-image", "Template name", default="Linux Ubuntu 24.04 LTS 64-bit", envvar="EXOSCALE_IMAGE"),
        Flag("exoscale-disk-size", "Root disk size in GB", default=20, type=int, envvar="EXOSCALE_DISK_SIZE"),
    ] + common_flags(
        "exoscale",
        "EXOSCALE_",
        ssh_user="ubuntu",
        endpoint_env="EXOSCALE_ENDPOINT",
        firewall_help="Security group to create or reuse",
        firewall_default="dockyard",
        tags=False,
    )

    def configure(self, options):
        self.config.update(ExoscaleSettings.from_flags(self.flag_values(options), prefix="exoscale_").to_config())

    def targets_exoscale(self):
        host = (urlsplit(self.config["Endpoint"]).hostname or "") if self.config.get("Endpoint") else "exoscale.com"
        return any(host == h or host.endswith("." + h) for h in EXOSCALE_HOSTS)

    def pre_create_check(self):
        if self.targets_exoscale():
            raise PreCreateCheckError(retired_message())  # before credentials are asked for or stored
        super().pre_create_check()

    def check_access(self, conn):
        from libcloud.common.types import ProviderError

        try:
            conn.list_key_pairs()
        except ProviderError as e:
            # What Exoscale's endpoints answer since the retirement (e.g. through a proxy):
            # 403 "This API is deprecated. See https://changelog.exoscale.com/... for more informations."
            if getattr(e, "http_code", None) == 403 and "deprecated" in str(getattr(e, "value", e)).lower():
                raise ExoscaleRetired() from None
            raise

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.exoscale import ExoscaleNodeDriver

        if self.targets_exoscale():
            raise ExoscaleRetired()

        kwargs = {}
        if endpoint:
            secure, host, port, path = endpoint
            kwargs = {"secure": secure, "host": host, "port": port, "path": path or "/compute"}
        return ExoscaleNodeDriver(secrets["api_key"], secrets["api_secret"], **kwargs)

    def resolve(self, conn):
        with self.api("finding the zone"):
            location = _named(conn.list_locations(), self.config["Zone"], "zone", self.name)
        with self.api("finding the instance type"):
            size = _named(
                conn.list_sizes(location=location), self.config["InstanceProfile"], "instance type", self.name
            )
        with self.api("finding the template"):
            image = _named(conn.list_images(location=location), self.config["Image"], "template", self.name)
        return {"location": location, "size": size, "image": image}

    def ensure_firewall(self, conn):
        name = self.config["FirewallName"]
        if not name:
            return
        with self.api(f'setting up security group "{name}"'):
            group = next((g for g in conn.ex_list_security_groups() if g["name"] == name), None)
            if group is None:
                # Not conn.ex_create_security_group: it refuses any name that is a substring of an existing
                # group's ("dockyard" while "dockyard-old" exists).
                reply = conn.connection.request(
                    conn.path,
                    params={"command": "createSecurityGroup", "name": name, "description": "dockyard machines"},
                ).object
                group = reply["createsecuritygroupresponse"]["securitygroup"]
            # Made by dockyard (now or for an earlier machine): the last machine to go deletes it.
            self.record(FirewallId=group["id"], FirewallManaged=group.get("description") == "dockyard machines")
            have = {
                (r.get("protocol"), int(r.get("startport", -1)), r.get("cidr")) for r in group.get("ingressrule", [])
            }
            for port, proto in self.ports():
                for cidr in self.config["SourceCIDRs"]:
                    if (proto, port, cidr) not in have:
                        conn.ex_authorize_security_group_ingress(name, proto, cidr, port, port)

    def release_firewall(self, conn):
        try:
            with self.api("deleting the security group"):
                conn.ex_delete_security_group(self.config["FirewallName"])  # refused while in use
        except CloudError:
            return
        self.record(FirewallId="", FirewallManaged=False)

    def create_node(self, conn, resolved, user_data):
        kwargs = dict(
            location=resolved["location"],
            ex_keyname=self.config["KeyPairName"],
            ex_userdata=user_data,
            ex_rootdisksize=self.config["DiskSize"],
            ex_start_vm=True,
        )
        if self.config["FirewallName"]:
            kwargs["ex_security_groups"] = [self.config["FirewallName"]]
        with self.api("creating the instance"):
            node = conn.create_node(self.node_name(), resolved["size"], resolved["image"], **kwargs)
        self.record(NodeId=str(node.id))
        return node

    def start_node(self, conn, node):
        with self.api("starting the instance"):
            conn.ex_start(node)

    def stop_node(self, conn, node):
        with self.api("stopping the instance"):
            conn.ex_stop(node)

    def destroy_node(self, conn, node):
        with self.api("deleting the instance"):
            conn.destroy_node(node, ex_expunge=True)
