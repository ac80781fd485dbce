"""The `openstack` driver: a Nova server, an imported key pair, a security group, an optional floating IP."""

import re

from provisioner.credentials import Field
from provisioner.errors import DriverError

from ..base import Flag
from .base import CloudDriver, common_flags, key_value_tags
from .errors import CloudError, CloudNotFound

GROUP_DESCRIPTION = "dockyard machines: SSH and the engine port"


def _by_name_or_id(items, name, ident, what, provider):
    for item in items:
        if (ident and str(item.id) == ident) or (name and item.name == name):
            return item
    raise CloudNotFound(f'{provider}: {what} "{ident or name}" not found')


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
        Flag("openstack-floatingip-pool", "Floating IP pool to take the public address from",
             envvar="OS_FLOATINGIP_POOL"),
        Flag("openstack-use-private-address", "Reach the server by its private (fixed) address", is_flag=True,
             envvar="OS_USE_PRIVATE_ADDRESS"),
    ] + common_flags("openstack", "OS_", ssh_user="ubuntu", endpoint=False,
                     firewall_help="Security group to create or reuse", firewall_default="dockyard")

    def configure(self, options):
        auth_url = self.opt(options, "auth_url", "")
        if not auth_url:
            raise DriverError("openstack driver requires --openstack-auth-url (or OS_AUTH_URL)")
        self.config.update(
            Endpoint=auth_url,
            TenantName=self.opt(options, "tenant_name", "") or "",
            DomainName=self.opt(options, "domain_name", "Default"),
            Region=self.opt(options, "region", "") or "",
            AvailabilityZone=self.opt(options, "availability_zone", "") or "",
            FlavorName=self.opt(options, "flavor_name", "") or "",
            FlavorId=self.opt(options, "flavor_id", "") or "",
            ImageName=self.opt(options, "image_name", "") or "",
            ImageId=self.opt(options, "image_id", "") or "",
            NetName=self.opt(options, "net_name", "") or "",
            NetId=self.opt(options, "net_id", "") or "",
            SecGroups=[g.strip() for g in (self.opt(options, "sec_groups", "") or "").split(",") if g.strip()],
            FloatingIPPool=self.opt(options, "floatingip_pool", "") or "",
            UsePrivateAddress=bool(self.opt(options, "use_private_address", False)),
        )
        self.late_address = bool(self.config["FloatingIPPool"]) and not self.config["UsePrivateAddress"]
        if not (self.config["FlavorName"] or self.config["FlavorId"]):
            raise DriverError("openstack driver requires --openstack-flavor-name or --openstack-flavor-id")
        key_value_tags(self.config["Tags"])

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver

        secure, host, port, path = endpoint
        base = f"{'https' if secure else 'http'}://{host}:{port}{re.sub(r'/v(3|2.0)/?$', '', path)}"
        kwargs = dict(ex_force_auth_url=base, ex_force_auth_version="3.x_password",
                      ex_domain_name=self.config["DomainName"], ex_tenant_name=self.config["TenantName"] or None)
        if self.config["Region"]:
            kwargs["ex_force_service_region"] = self.config["Region"]
        return OpenStack_2_NodeDriver(secrets["username"], secrets["password"], **kwargs)

    def check_access(self, conn):
        conn.list_key_pairs()

    def resolve(self, conn):
        with self.api("finding the flavor"):
            size = _by_name_or_id(conn.list_sizes(), self.config["FlavorName"], self.config["FlavorId"], "flavor",
                                  self.name)
        with self.api("finding the image"):
            image = _by_name_or_id(conn.list_images(), self.config["ImageName"], self.config["ImageId"], "image",
                                   self.name)
        networks = None
        if self.config["NetName"] or self.config["NetId"]:
            with self.api("finding the network"):
                networks = [_by_name_or_id(conn.ex_list_networks(), self.config["NetName"], self.config["NetId"],
                                           "network", self.name)]
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
            have = {(r.ip_protocol, int(r.from_port), r.ip_range) for r in group.rules
                    if r.from_port is not None and r.from_port == r.to_port}
            for port, proto in self.ports():
                for cidr in self.config["SourceCIDRs"]:
                    if (proto, port, cidr) not in have:
                        conn.ex_create_security_group_rule(group, proto, port, port, cidr)

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
        kwargs = dict(ex_keyname=self.config["KeyPairName"], ex_userdata=user_data, ex_metadata=metadata,
                      ex_security_groups=[OpenStackSecurityGroup(None, None, g, "", driver=conn) for g in groups])
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
            self.record(FloatingIPId=str(ip.id))
            conn.ex_attach_floating_ip_to_node(node, ip)
        node.public_ips = [ip.ip_address]
        return node

    def get_node(self, conn):
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        with self.api("looking up the server"):
            node = conn.ex_get_node_details(node_id)
        if node is not None and self.config.get("FloatingIPId") and not node.public_ips:
            node.public_ips = [a for a in node.extra.get("floating_ips", []) if a]
        return node

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

    def delete_key(self, conn):
        with self.api("deleting the key pair"):
            for kp in conn.list_key_pairs():
                if kp.name == self.config["KeyPairName"]:
                    conn.delete_key_pair(kp)
