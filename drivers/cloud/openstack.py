"""The `openstack` driver: a Nova server, an imported key pair, a security group, an optional floating IP."""

import contextlib
import dataclasses
import re
import time

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import RUNNING_TIMEOUT, CloudDriver, common_flags, key_value_tags
from dockyard.drivers.cloud.errors import CloudError, CloudNotFound, CloudQuotaError, one_line
from dockyard.provisioner.core.credentials import Field
from dockyard.provisioner.core.errors import DriverError

GROUP_DESCRIPTION = "dockyard machines: SSH and the engine port"


def _by_name_or_id(items, name, ident, what, provider):
    for item in items:
        if (ident and str(item.id) == ident) or (name and item.name == name):
            return item
    raise CloudNotFound(f'{provider}: {what} "{ident or name}" not found')


@dataclasses.dataclass
class OpenStackSettings(Settings):
    """The server's settings (flag keys without the `openstack_` prefix)."""

    auth_url: str = setting("Endpoint", flag="auth_url")
    tenant_name: str = setting("TenantName", flag="tenant_name")
    domain_name: str = setting("DomainName", flag="domain_name")
    region: str = setting("Region", flag="region")
    availability_zone: str = setting("AvailabilityZone", flag="availability_zone")
    flavor_name: str = setting("FlavorName", flag="flavor_name")
    flavor_id: str = setting("FlavorId", flag="flavor_id")
    image_name: str = setting("ImageName", flag="image_name")
    image_id: str = setting("ImageId", flag="image_id")
    net_name: str = setting("NetName", flag="net_name")
    net_id: str = setting("NetId", flag="net_id")
    sec_groups: list[str] = setting("SecGroups", flag="sec_groups")  # the flag's "a,b", then the list
    floating_ip_pool: str = setting("FloatingIPPool", flag="floatingip_pool")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_private_address")

    def __post_init__(self) -> None:
        if not self.auth_url:
            raise DriverError("openstack driver requires --openstack-auth-url (or OS_AUTH_URL)")
        self.tenant_name, self.region = self.tenant_name or "", self.region or ""
        self.availability_zone, self.floating_ip_pool = self.availability_zone or "", self.floating_ip_pool or ""
        self.flavor_name, self.flavor_id = self.flavor_name or "", self.flavor_id or ""
        self.image_name, self.image_id = self.image_name or "", self.image_id or ""
        self.net_name, self.net_id = self.net_name or "", self.net_id or ""
        text = str(self.sec_groups or "")
        self.sec_groups = [g.strip() for g in text.split(",") if g.strip()]
        if not (self.flavor_name or self.flavor_id):
            raise DriverError("openstack driver requires --openstack-flavor-name or --openstack-flavor-id")
        if not self.tenant_name:
            # Keystone v3 password auth scoped to a project: without one every call is refused.
            raise DriverError("openstack driver requires --openstack-tenant-name (or OS_PROJECT_NAME)")


class OpenStackDriver(CloudDriver):
    name = "openstack"
    endpoint_is_api = False  # the endpoint is Keystone; services come from its catalogue
    credential_fields = [
        Field("username", "OS_USERNAME", "openstack_username"),
        Field("password", "OS_PASSWORD", "openstack_password"),
    ]
    flags = [
        Flag("openstack-auth-url", "Keystone URL (e.g. https://keystone:5000/v3)", envvar="OS_AUTH_URL"),
        Flag("openstack-username", "User name", envvar="OS_USERNAME"),
        Flag("openstack-password", "Password", envvar="OS_PASSWORD"),
        Flag("openstack-tenant-name", "Project (tenant) name", envvar="OS_PROJECT_NAME"),
        Flag("openstack-domain-name", "User domain name", default="Default", envvar="OS_USER_DOMAIN_NAME"),
        Flag("openstack-region", "Region", envvar="OS_REGION_NAME"),
        Flag("openstack-availability-zone", "Availability zone", envvar="OS_AVAILABILITY_ZONE"),
        Flag("openstack-flavor-name", "Flavor name", envvar="OS_FLAVOR_NAME"),
        Flag("openstack-flavor-id", "Flavor id", envvar="OS_FLAVOR_ID"),
        Flag("openstack-image-name", "Image name", default="Ubuntu 24.04", envvar="OS_IMAGE_NAME"),
        Flag("openstack-image-id", "Image id", envvar="OS_IMAGE_ID"),
        Flag("openstack-net-name", "Network name", envvar="OS_NETWORK_NAME"),
        Flag("openstack-net-id", "Network id", envvar="OS_NETWORK_ID"),
        Flag("openstack-sec-groups", "Extra existing security groups, comma separated", envvar="OS_SECURITY_GROUPS"),
        Flag(
            "openstack-floatingip-pool", "Floating IP pool to take the public address from", envvar="OS_FLOATINGIP_POOL"
        ),
        Flag(
            "openstack-use-private-address",
            "Reach the server by its private (fixed) address",
            is_flag=True,
            envvar="OS_USE_PRIVATE_ADDRESS",
        ),
    ] + common_flags(
        "openstack",
        "OS_",
        ssh_user="ubuntu",
        endpoint=False,
        firewall_help="Security group to create or reuse",
        firewall_default="dockyard",
    )

    def configure(self, options):
        # The auth URL replaces the common Endpoint (same key, same place in config.json).
        self.config.update(OpenStackSettings.from_flags(self.flag_values(options), prefix="openstack_").to_config())
        self.late_address = bool(self.config["FloatingIPPool"]) and not self.config["UsePrivateAddress"]
        key_value_tags(self.config["Tags"])

    @contextlib.contextmanager
    def api(self, what):
        from libcloud.common.exceptions import BaseHTTPError

        with super().api(what):
            try:
                yield
            except BaseHTTPError as e:
                # Nova answers "403 Quota exceeded for instances/cores/ram": a quota, not refused credentials.
                if e.code in (403, 413) and "quota" in str(e.message or "").lower():
                    raise CloudQuotaError(f"{self.name}: {what}: quota reached ({one_line(e.message)})") from None
                raise

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver

        secure, host, port, path = endpoint
        base = f"{'https' if secure else 'http'}://{host}:{port}{re.sub(r'/v(3|2.0)/?$', '', path)}"
        kwargs = dict(
            ex_force_auth_url=base,
            ex_force_auth_version="3.x_password",
            ex_domain_name=self.config["DomainName"],
            ex_tenant_name=self.config["TenantName"] or None,
        )
        if self.config["Region"]:
            kwargs["ex_force_service_region"] = self.config["Region"]
        return OpenStack_2_NodeDriver(secrets["username"], secrets["password"], **kwargs)

    def check_access(self, conn):
        from libcloud.common.types import LibcloudError

        try:
            conn.list_key_pairs()
        except LibcloudError as e:
            if "Could not find specified endpoint" not in str(e):
                raise
            # Signed in, but the catalogue has no compute endpoint in the region (libcloud's default:
            # RegionOne): say which regions there are.
            catalog = conn.connection.service_catalog
            regions = sorted({r for r in (catalog.get_regions("compute") if catalog else []) if r})
            wanted = self.config["Region"] or "RegionOne (the default)"
            raise CloudNotFound(
                f'{self.name}: no compute endpoint in region "{wanted}" '
                f"(regions in the service catalogue: {', '.join(regions) or 'none'}); "
                "set --openstack-region"
            ) from None

    def resolve(self, conn):
        with self.api("finding the flavor"):
            size = _by_name_or_id(
                conn.list_sizes(), self.config["FlavorName"], self.config["FlavorId"], "flavor", self.name
            )
        with self.api("finding the image"):
            image = _by_name_or_id(
                conn.list_images(), self.config["ImageName"], self.config["ImageId"], "image", self.name
            )
        networks = None
        if self.config["NetName"] or self.config["NetId"]:
            with self.api("finding the network"):
                networks = [
                    _by_name_or_id(
                        conn.ex_list_networks(), self.config["NetName"], self.config["NetId"], "network", self.name
                    )
                ]
        pool = self.config["FloatingIPPool"]
        if pool:
            with self.api("finding the floating IP pool"):
                _by_name_or_id(conn.ex_list_floating_ip_pools(), pool, pool, "floating IP pool", self.name)
        return {"size": size, "image": image, "networks": networks}

    # -- security group ---------------------------------------------------------------------------------------
    def _group(self, conn, name):
        return next((g for g in conn.ex_list_security_groups() if g.name == name), None)

    def ensure_firewall(self, conn):
        name = self.config["FirewallName"]
        if not name:
            return
        with self.api(f'setting up security group "{name}"'):
            group = self._group(conn, name)
            if group is None:
                group = conn.ex_create_security_group(name, GROUP_DESCRIPTION)
            self.record(FirewallId=str(group.id), FirewallManaged=group.description == GROUP_DESCRIPTION)
            # Neutron may store "anywhere" as no prefix at all; libcloud does not tell ingress from egress,
            # but the default egress rules have no ports, so they never match.
            have = {
                (r.ip_protocol, int(r.from_port), r.ip_range or "0.0.0.0/0")
                for r in group.rules
                if r.from_port is not None and r.from_port == r.to_port
            }
            for port, proto in self.ports():
                for cidr in self.config["SourceCIDRs"]:
                    if (proto, port, cidr) not in have:
                        self._add_rule(conn, group, proto, port, cidr)

    def _add_rule(self, conn, group, proto, port, cidr):
        from libcloud.common.exceptions import BaseHTTPError

        try:
            conn.ex_create_security_group_rule(group, proto, port, port, cidr)
        except BaseHTTPError as e:
            if e.code != 409:  # 409: the rule exists already (e.g. stored in another spelling)
                raise

    def release_firewall(self, conn):
        name = self.config["FirewallName"]
        try:
            with self.api("deleting the security group"):
                group = self._group(conn, name)
                if group is not None:
                    conn.ex_delete_security_group(group)  # refused while a server still uses it
        except CloudError:
            return
        self.record(FirewallId="", FirewallManaged=False)

    # -- server --------------------------------------------------------------------------------------------------
    def create_node(self, conn, resolved, user_data):
        from libcloud.compute.drivers.openstack import OpenStackSecurityGroup

        groups = [self.config["FirewallName"]] if self.config["FirewallName"] else []
        groups += [g for g in self.config["SecGroups"] if g not in groups]
        metadata = {"dockyard-machine": self.machine_name, **key_value_tags(self.config["Tags"])}
        kwargs = dict(
            ex_keyname=self.config["KeyPairName"],
            ex_userdata=user_data,
            ex_metadata=metadata,
            ex_security_groups=[OpenStackSecurityGroup(None, None, g, "", driver=conn) for g in groups],
        )
        if resolved.get("networks"):
            kwargs["networks"] = resolved["networks"]
        if self.config["AvailabilityZone"]:
            kwargs["ex_availability_zone"] = self.config["AvailabilityZone"]
        with self.api("creating the server"):
            node = conn.create_node(self.node_name(), resolved["size"], resolved["image"], **kwargs)
        self.record(NodeId=str(node.id))
        return node

    def after_running(self, conn, node):
        pool = self.config["FloatingIPPool"]
        if not pool or self.config.get("FloatingIPId"):
            return node
        with self.api(f'taking a floating IP from pool "{pool}"'):
            ip = conn.ex_create_floating_ip(pool)
        if ip is None:
            raise CloudNotFound(f'{self.name}: floating IP pool "{pool}" not found')
        self.record(FloatingIPId=str(ip.id))
        with self.api(f"attaching floating IP {ip.ip_address}"):
            attached = conn.ex_attach_floating_ip_to_node(node, ip)
        if not attached:
            raise CloudError(f"{self.name}: could not attach floating IP {ip.ip_address}: the server has no port")
        node.public_ips = [ip.ip_address]
        self.config["FloatingIPAddress"] = ip.ip_address
        return node

    def get_node(self, conn):
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        with self.api("looking up the server"):
            return conn.ex_get_node_details(node_id)

    def addresses(self, node):
        """Nova labels each address fixed or floating; libcloud guesses public/private from the range,
        which puts a floating IP from a private range (common in private clouds) among the private ones."""
        floating, fixed = [], []
        for entries in (node.extra or {}).get("addresses", {}).values():
            for a in entries:
                addr = a.get("addr")
                if addr and a.get("version", 4) == 4:
                    (floating if a.get("OS-EXT-IPS:type") == "floating" else fixed).append(addr)
        public, private = super().addresses(node)
        if self.config.get("FloatingIPAddress") and self.config["FloatingIPAddress"] in floating + list(
            node.public_ips or []
        ):
            public = self.config["FloatingIPAddress"]
        elif floating:
            public = floating[0]
        private = next((a for a in fixed if a in (node.private_ips or [])), None) or next(
            (a for a in fixed if a != public), private
        )
        return public, private

    def wait_gone(self, conn, node, timeout=RUNNING_TIMEOUT):
        # Neutron refuses to delete a security group while the deleted server's port still exists.
        deadline = time.monotonic() + timeout
        while self.get_node(conn) is not None and time.monotonic() < deadline:
            time.sleep(self.poll_interval)

    def remove(self):
        super().remove()
        ip_id = self.config.get("FloatingIPId")
        if ip_id:
            conn = self.conn()
            with self.api("releasing the floating IP"):
                for ip in conn.ex_list_floating_ips():
                    if str(ip.id) == ip_id:
                        conn.ex_delete_floating_ip(ip)
            self.record(FloatingIPId="")
            self.config["FloatingIPAddress"] = ""

    def delete_key(self, conn):
        with self.api("deleting the key pair"):
            for kp in conn.list_key_pairs():
                if kp.name == self.config["KeyPairName"]:
                    conn.delete_key_pair(kp)
