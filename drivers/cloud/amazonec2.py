"""The `amazonec2` driver: EC2 instances in a VPC subnet, a shared security group, an imported key pair."""

import dataclasses
import uuid

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags, key_value_tags
from dockyard.drivers.cloud.errors import CloudError, CloudNotFound
from dockyard.provisioner.core.credentials import Field
from dockyard.provisioner.core.errors import DriverError

CANONICAL = "099720109477"
# Ubuntu 24.04 LTS (noble), newest first by the date in the name; the same query works in every region.
UBUNTU_IMAGE_NAME = "ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-{arch}-server-*"
GROUP_DESCRIPTION = "dockyard machines: SSH and the engine port"


def _arch(instance_type):
    # Graviton families carry a "g" after the generation digit (t4g, m7g, c7gn...).
    family = instance_type.split(".")[0]
    return "arm64" if len(family) > 2 and "g" in family[2:] and family[0] != "g" else "amd64"


@dataclasses.dataclass
class AmazonEC2Settings(Settings):
    """The instance's settings (flag keys without the `amazonec2_` prefix)."""

    region: str = setting("Region", flag="region")
    zone: str = setting("Zone", flag="zone")
    ami: str = setting("AMI", flag="ami")
    instance_type: str = setting("InstanceType", flag="instance_type")
    vpc_id: str = setting("VpcId", flag="vpc_id")
    subnet_id: str = setting("SubnetId", flag="subnet_id")
    security_group: str = setting("FirewallName", flag="security_group")  # the common firewall's key
    security_group_readonly: bool = setting("SecurityGroupReadonly", flag="security_group_readonly")
    root_size: int = setting("RootSize", flag="root_size")
    volume_type: str = setting("VolumeType", flag="volume_type")
    device_name: str = setting("DeviceName", flag="device_name")
    iam_instance_profile: str = setting("IamInstanceProfile", flag="iam_instance_profile")
    private_address_only: bool = setting("PrivateAddressOnly", flag="private_address_only")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_private_address")
    spot_instance: bool = setting("SpotInstance", flag="request_spot_instance")
    spot_price: str = setting("SpotPrice", flag="spot_price")

    def __post_init__(self) -> None:
        self.ami, self.vpc_id, self.subnet_id = self.ami or "", self.vpc_id or "", self.subnet_id or ""
        self.device_name, self.iam_instance_profile = self.device_name or "", self.iam_instance_profile or ""
        self.spot_price, self.root_size = self.spot_price or "", int(self.root_size)
        self.use_private_address = self.private_address_only or self.use_private_address
        if len(self.zone) != 1 or not self.zone.isalpha():
            raise DriverError(f'invalid zone "{self.zone}": expected one letter, as "a"')
        if self.root_size < 1:
            raise DriverError("--amazonec2-root-size must be at least 1 (GB)")


class AmazonEC2Driver(CloudDriver):
    name = "amazonec2"
    credential_fields = [
        Field("access_key", "AWS_ACCESS_KEY_ID", "amazonec2_access_key"),
        Field("secret_key", "AWS_SECRET_ACCESS_KEY", "amazonec2_secret_key"),
        Field("session_token", "AWS_SESSION_TOKEN", "amazonec2_session_token", required=False),
    ]
    flags = [
        Flag("amazonec2-access-key", "AWS access key ID", envvar="AWS_ACCESS_KEY_ID"),
        Flag("amazonec2-secret-key", "AWS secret access key", envvar="AWS_SECRET_ACCESS_KEY"),
        Flag("amazonec2-session-token", "AWS session token", envvar="AWS_SESSION_TOKEN"),
        Flag("amazonec2-region", "Region", default="us-east-1", envvar="AWS_DEFAULT_REGION"),
        Flag("amazonec2-zone", "Availability zone letter", default="a", envvar="AWS_ZONE"),
        Flag(
            "amazonec2-ami",
            "AMI id (default: the newest Ubuntu 24.04 LTS AMI from Canonical in the region)",
            envvar="AWS_AMI",
        ),
        Flag("amazonec2-instance-type", "Instance type", default="t3.micro", envvar="AWS_INSTANCE_TYPE"),
        Flag("amazonec2-vpc-id", "VPC id (default: the region's default VPC)", envvar="AWS_VPC_ID"),
        Flag("amazonec2-subnet-id", "Subnet id (default: the VPC's subnet in the zone)", envvar="AWS_SUBNET_ID"),
        Flag(
            "amazonec2-security-group",
            "Security group to create or reuse",
            default="dockyard",
            envvar="AWS_SECURITY_GROUP",
        ),
        Flag(
            "amazonec2-security-group-readonly",
            "Use the security group as it is; do not add rules",
            is_flag=True,
            envvar="AWS_SECURITY_GROUP_READONLY",
        ),
        Flag("amazonec2-root-size", "Root disk size in GB", default=16, type=int, envvar="AWS_ROOT_SIZE"),
        Flag("amazonec2-volume-type", "Root volume type", default="gp3", envvar="AWS_VOLUME_TYPE"),
        Flag("amazonec2-device-name", "Root device name (default: the AMI's)", envvar="AWS_DEVICE_NAME"),
        Flag("amazonec2-iam-instance-profile", "IAM instance profile name or ARN", envvar="AWS_INSTANCE_PROFILE"),
        Flag(
            "amazonec2-private-address-only",
            "No public address; reach the machine by its private one",
            is_flag=True,
            envvar="AWS_PRIVATE_ADDRESS_ONLY",
        ),
        Flag(
            "amazonec2-use-private-address",
            "Reach the machine by its private address",
            is_flag=True,
            envvar="AWS_USE_PRIVATE_ADDRESS",
        ),
        Flag(
            "amazonec2-request-spot-instance",
            "Ask for a spot instance",
            is_flag=True,
            envvar="AWS_REQUEST_SPOT_INSTANCE",
        ),
        Flag("amazonec2-spot-price", "Maximum spot price (default: on-demand price)", envvar="AWS_SPOT_PRICE"),
    ] + common_flags("amazonec2", "AWS_", ssh_user="ubuntu", endpoint_env="AWS_ENDPOINT")

    def configure(self, options):
        key_value_tags(self.config["Tags"])  # validate now (before the zone and size checks, as always)
        self.config.update(AmazonEC2Settings.from_flags(self.flag_values(options), prefix="amazonec2_").to_config())

    # -- connection --------------------------------------------------------------------------------
    def connect(self, secrets, endpoint):
        from libcloud.compute.providers import get_driver
        from libcloud.compute.types import Provider

        cls = get_driver(Provider.EC2)
        region = self.config["Region"]
        if region not in cls.list_regions():
            raise CloudNotFound(f'{self.name}: unknown region "{region}"')
        return cls(
            secrets["access_key"],
            secrets["secret_key"],
            token=secrets.get("session_token") or None,
            region=region,
            signature_version="4",
            **self.endpoint_kwargs(endpoint),
        )

    def check_access(self, conn):
        conn.list_key_pairs()

    def _request(self, conn, params):
        return conn.connection.request(conn.path, params=params).object

    def resolve(self, conn):
        with self.api("finding the VPC"):
            if not self.config["VpcId"]:
                vpcs = conn.ex_list_networks(filters={"isDefault": "true"})
                if not vpcs:
                    raise CloudNotFound(
                        f"{self.name}: region {self.config['Region']} has no default VPC; "
                        "pass --amazonec2-vpc-id and --amazonec2-subnet-id"
                    )
                self.config["VpcId"] = vpcs[0].id
        with self.api("finding the subnet"):
            if not self.config["SubnetId"]:
                zone = self.config["Region"] + self.config["Zone"]
                subnets = conn.ex_list_subnets(filters={"vpc-id": self.config["VpcId"], "availability-zone": zone})
                if not subnets:
                    raise CloudNotFound(
                        f"{self.name}: VPC {self.config['VpcId']} has no subnet in zone {zone}; "
                        "pass --amazonec2-subnet-id or another --amazonec2-zone"
                    )
                self.config["SubnetId"] = subnets[0].id
            subnets = conn.ex_list_subnets(subnet_ids=[self.config["SubnetId"]])
        with self.api("checking the instance type"):
            self._request(conn, {"Action": "DescribeInstanceTypes", "InstanceType.1": self.config["InstanceType"]})
        image = self._image(conn)
        from libcloud.compute.base import NodeSize

        size = NodeSize(self.config["InstanceType"], self.config["InstanceType"], None, None, None, None, conn)
        return {"image": image, "size": size, "subnet": subnets[0], "maps_public_ip": self._maps_public_ip(conn)}

    def _maps_public_ip(self, conn):
        from libcloud.compute.drivers.ec2 import NAMESPACE
        from libcloud.utils.xml import findtext

        with self.api("checking the subnet"):
            xml = self._request(conn, {"Action": "DescribeSubnets", "SubnetId.1": self.config["SubnetId"]})
        return findtext(element=xml, xpath="subnetSet/item/mapPublicIpOnLaunch", namespace=NAMESPACE) == "true"

    def _image(self, conn):
        with self.api("finding the image"):
            if self.config["AMI"]:
                images = conn.list_images(ex_image_ids=[self.config["AMI"]])
                if not images:
                    raise CloudNotFound(
                        f'{self.name}: image "{self.config["AMI"]}" not found in region {self.config["Region"]}'
                    )
                return images[0]
            pattern = UBUNTU_IMAGE_NAME.format(arch=_arch(self.config["InstanceType"]))
            images = conn.list_images(ex_owner=CANONICAL, ex_filters={"name": pattern, "state": "available"})
            if not images:
                raise CloudNotFound(
                    f"{self.name}: no Ubuntu 24.04 image from Canonical in region "
                    f"{self.config['Region']}; pass --amazonec2-ami"
                )
            image = max(images, key=lambda i: (i.extra.get("creation_date") or "", i.name or ""))
            self.config["AMI"] = image.id
            return image

    # -- shared security group ---------------------------------------------------------------------------
    def _find_group(self, conn):
        groups = conn.ex_get_security_groups(
            filters={"group-name": self.config["FirewallName"], "vpc-id": self.config["VpcId"]}
        )
        return groups[0] if groups else None

    def ensure_firewall(self, conn):
        with self.api(f'setting up security group "{self.config["FirewallName"]}"'):
            group = self._find_group(conn)
            if group is None:
                if self.config["SecurityGroupReadonly"]:
                    raise CloudNotFound(
                        f'{self.name}: security group "{self.config["FirewallName"]}" does not exist '
                        "(and --amazonec2-security-group-readonly was given)"
                    )
                created = conn.ex_create_security_group(
                    self.config["FirewallName"], GROUP_DESCRIPTION, vpc_id=self.config["VpcId"]
                )
                group = conn.ex_get_security_groups(group_ids=[created["group_id"]])[0]
            self.record(FirewallId=group.id, FirewallManaged=group.extra.get("description") == GROUP_DESCRIPTION)
            if self.config["SecurityGroupReadonly"]:
                return
            have = {
                (int(r["from_port"]), r["protocol"], c)
                for r in group.ingress_rules
                if r.get("from_port") not in (None, "") and r.get("from_port") == r.get("to_port")
                for c in r.get("cidr_ips") or []
            }
            for port, proto in self.ports():
                for cidr in self.config["SourceCIDRs"]:
                    if (port, proto, cidr) not in have:
                        conn.ex_authorize_security_group_ingress(group.id, port, port, cidr_ips=[cidr], protocol=proto)

    def release_firewall(self, conn):
        group_id = self.config.get("FirewallId")
        if not group_id:
            return
        with self.api("checking whether the security group is still used"):
            users = [
                n
                for n in conn.list_nodes(ex_filters={"instance.group-id": group_id})
                if n.extra.get("status") not in ("terminated",) and str(n.id) != str(self.config.get("NodeId"))
            ]
        if users:
            return
        try:
            with self.api("deleting the security group"):
                conn.ex_delete_security_group_by_id(group_id)
        except CloudError:
            return  # still referenced (e.g. an instance shutting down): leave it, as documented
        self.record(FirewallId="", FirewallManaged=False)

    # -- key pair ------------------------------------------------------------------------------------------
    def import_key(self, conn, name, public_key):
        with self.api("importing the SSH key pair"):
            existing = [k for k in conn.list_key_pairs() if k.name == name]
            if existing:
                return name  # our own key from an earlier attempt: the name holds the key's digest
            conn.import_key_pair_from_string(name, public_key)
        return name

    def delete_key(self, conn):
        name = self.config.get("KeyPairName")
        with self.api("deleting the SSH key pair"):
            self._request(conn, {"Action": "DeleteKeyPair", "KeyName": name})

    # -- nodes -------------------------------------------------------------------------------------------------
    def create_node(self, conn, resolved, user_data):
        image = resolved["image"]
        tags = {"dockyard-machine": self.machine_name}
        tags.update(key_value_tags(self.config["Tags"]))
        device = self.config["DeviceName"] or image.extra.get("root_device_name") or "/dev/sda1"
        mapping = [
            {
                "DeviceName": device,
                "Ebs": {
                    "VolumeSize": self.config["RootSize"],
                    "VolumeType": self.config["VolumeType"],
                    "DeleteOnTermination": "true",
                },
            }
        ]
        # The client token makes the call idempotent and lets rm -f find an instance whose id was lost.
        token = self.config.get("ClientToken") or uuid.uuid4().hex
        self.record(ClientToken=token)
        kwargs = dict(
            ex_keyname=self.config["KeyPairName"],
            ex_userdata=user_data,
            ex_metadata=tags,
            ex_security_group_ids=[self.config["FirewallId"]],
            ex_subnet=resolved["subnet"],
            ex_blockdevicemappings=mapping,
            ex_clienttoken=token,
            # A subnet that maps public addresses gives one anyway; asking through a network interface
            # spec is only needed where it does not (and moves the groups onto the interface).
            ex_assign_public_ip=not self.config["PrivateAddressOnly"] and not resolved["maps_public_ip"],
        )
        if self.config["IamInstanceProfile"]:
            kwargs["ex_iamprofile"] = self.config["IamInstanceProfile"]
        if self.config["SpotInstance"]:
            kwargs["ex_spot"] = True
            if self.config["SpotPrice"]:
                kwargs["ex_spot_max_price"] = float(self.config["SpotPrice"])
        with self.api("running the instance"):
            return conn.create_node(self.machine_name, resolved["size"], image, **kwargs)

    def get_node(self, conn):
        node_id = self.config.get("NodeId")
        if not node_id:
            return None
        try:
            with self.api("looking up the instance"):
                nodes = conn.list_nodes(ex_node_ids=[node_id])
        except CloudNotFound:
            return None
        return nodes[0] if nodes else None

    def find_orphan(self, conn):
        token = self.config.get("ClientToken")
        if not token:
            return None
        with self.api("looking for a half-created instance"):
            nodes = conn.list_nodes(ex_filters={"client-token": token})
        return next((n for n in nodes if n.extra.get("status") != "terminated"), None)

    def destroy_node(self, conn, node):
        if node.extra.get("status") == "terminated":
            return
        with self.api("terminating the instance"):
            conn.destroy_node(node)

    def kill_node(self, conn, node):
        with self.api("stopping the instance (forced)"):
            self._request(conn, {"Action": "StopInstances", "InstanceId.1": node.id, "Force": "true"})
