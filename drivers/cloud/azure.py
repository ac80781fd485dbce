"""The `azure` driver: an Azure VM with a public IP and NIC of its own, in a resource group and virtual
network that are created when missing, behind a shared network security group. Calls go through libcloud's
Azure Resource Manager connection (its sign-in and errors); the requests themselves are plain ARM."""

import base64
import dataclasses
import re
import time

from dockyard.drivers.base import Flag, Settings, State, setting
from dockyard.drivers.cloud.base import (
    RUNNING_TIMEOUT,
    CloudDriver,
    common_flags,
    json_body,
    key_value_tags,
    parse_endpoint,
)
from dockyard.drivers.cloud.errors import CloudError, CloudNotFound
from dockyard.provisioner.core.credentials import Field
from dockyard.provisioner.core.errors import DriverError

NET_API = "2023-09-01"
COMPUTE_API = "2024-03-01"
RG_API = "2021-04-01"
SUB_API = "2022-12-01"  # Microsoft.Resources subscriptions and their locations
DEFAULT_IMAGE = "Canonical:ubuntu-24_04-lts:server:latest"
ENVIRONMENTS = {
    "AzurePublicCloud": "default",
    "AzureChinaCloud": "AzureChinaCloud",
    "AzureUSGovernment": "AzureUSGovernment",
    "AzureGermanCloud": "AzureGermanCloud",
}
POWER = {
    "PowerState/running": State.RUNNING,
    "PowerState/starting": State.STARTING,
    "PowerState/stopping": State.STOPPING,
    "PowerState/stopped": State.STOPPED,
    "PowerState/deallocating": State.STOPPING,
    "PowerState/deallocated": State.STOPPED,
}


class _VM:
    """What the base needs of a node: id, state, addresses."""

    def __init__(self, vm_id, state, public, private):
        self.id, self.state, self.public_ips, self.private_ips = vm_id, state, public, private


@dataclasses.dataclass
class AzureSettings(Settings):
    """The VM's settings (flag keys without the `azure_` prefix)."""

    subscription_id: str = setting("SubscriptionId", flag="subscription_id")
    tenant_id: str = setting("TenantId", flag="tenant_id")
    environment: str = setting("Environment", flag="environment")
    ad_endpoint: str = setting("ADEndpoint", flag="ad_endpoint")
    location: str = setting("Location", flag="location")
    resource_group: str = setting("ResourceGroup", flag="resource_group")
    size: str = setting("Size", flag="size")
    image: str = setting("Image", flag="image")
    vnet: str = setting("VNet", flag="vnet")
    subnet: str = setting("Subnet", flag="subnet")
    subnet_prefix: str = setting("SubnetPrefix", flag="subnet_prefix")
    disk_size: int = setting("DiskSize", flag="disk_size")
    storage_type: str = setting("StorageType", flag="storage_type")
    no_public_ip: bool = setting("NoPublicIP", flag="no_public_ip")
    use_private_address: bool = setting("UsePrivateAddress", flag="use_private_ip")

    def __post_init__(self) -> None:
        for flag, value in (("subscription-id", self.subscription_id), ("tenant-id", self.tenant_id)):
            if not value:
                raise DriverError(f"azure driver requires --azure-{flag}")
        if self.environment not in ENVIRONMENTS:
            raise DriverError(f'unknown --azure-environment "{self.environment}" (known: {", ".join(ENVIRONMENTS)})')
        if len(self.image.split(":")) != 4:
            raise DriverError(f'invalid --azure-image "{self.image}": expected publisher:offer:sku:version')
        self.ad_endpoint = self.ad_endpoint or ""
        if self.ad_endpoint and parse_endpoint(self.ad_endpoint)[2] != 443:
            # libcloud signs in to Active Directory on port 443 of the URL's host, whatever the URL says.
            raise DriverError(f'--azure-ad-endpoint "{self.ad_endpoint}": the Azure sign-in goes to port 443 only')
        self.disk_size = int(self.disk_size)
        self.use_private_address = self.no_public_ip or self.use_private_address


class AzureDriver(CloudDriver):
    name = "azure"
    imports_key = False  # the key goes into the VM's osProfile
    endpoint_is_api = False
    credential_fields = [
        Field("client_id", "AZURE_CLIENT_ID", "azure_client_id"),
        Field("client_secret", "AZURE_CLIENT_SECRET", "azure_client_secret"),
    ]
    flags = [
        Flag("azure-subscription-id", "Subscription id", envvar="AZURE_SUBSCRIPTION_ID"),
        Flag("azure-tenant-id", "Tenant (directory) id", envvar="AZURE_TENANT_ID"),
        Flag("azure-client-id", "Service principal application (client) id", envvar="AZURE_CLIENT_ID"),
        Flag("azure-client-secret", "Service principal secret", envvar="AZURE_CLIENT_SECRET"),
        Flag(
            "azure-environment",
            "Cloud: " + ", ".join(ENVIRONMENTS),
            default="AzurePublicCloud",
            envvar="AZURE_ENVIRONMENT",
        ),
        Flag(
            "azure-ad-endpoint",
            "Active Directory URL with --azure-endpoint (private clouds; port 443 only)",
            envvar="AZURE_AD_ENDPOINT",
        ),
        Flag("azure-location", "Location", default="westeurope", envvar="AZURE_LOCATION"),
        Flag(
            "azure-resource-group",
            "Resource group (created when missing)",
            default="dockyard",
            envvar="AZURE_RESOURCE_GROUP",
        ),
        Flag("azure-size", "VM size", default="Standard_B1s", envvar="AZURE_SIZE"),
        Flag("azure-image", "Image URN publisher:offer:sku:version", default=DEFAULT_IMAGE, envvar="AZURE_IMAGE"),
        Flag("azure-vnet", "Virtual network (created when missing)", default="dockyard-vnet", envvar="AZURE_VNET"),
        Flag("azure-subnet", "Subnet", default="dockyard", envvar="AZURE_SUBNET"),
        Flag(
            "azure-subnet-prefix",
            "Subnet prefix when it is created",
            default="192.168.0.0/16",
            envvar="AZURE_SUBNET_PREFIX",
        ),
        Flag("azure-disk-size", "OS disk size in GB", default=30, type=int, envvar="AZURE_DISK_SIZE"),
        Flag("azure-storage-type", "OS disk storage type", default="StandardSSD_LRS", envvar="AZURE_STORAGE_TYPE"),
        Flag("azure-no-public-ip", "No public IP address", is_flag=True, envvar="AZURE_NO_PUBLIC_IP"),
        Flag(
            "azure-use-private-ip",
            "Reach the machine by its private address",
            is_flag=True,
            envvar="AZURE_USE_PRIVATE_IP",
        ),
    ] + common_flags(
        "azure",
        "AZURE_",
        ssh_user="docker-user",
        firewall_help="Network security group to create or reuse",
        firewall_default="dockyard-nsg",
    )

    def configure(self, options):
        self.config.update(AzureSettings.from_flags(self.flag_values(options), prefix="azure_").to_config())
        key_value_tags(self.config["Tags"])

    def connect(self, secrets, endpoint):
        from libcloud.compute.drivers.azure_arm import AzureNodeDriver

        env = ENVIRONMENTS[self.config["Environment"]]
        cls = AzureNodeDriver
        if endpoint:
            from libcloud.common.azure_arm import publicEnvironments

            env = dict(publicEnvironments[env], resourceManagerEndpointUrl=self.config["Endpoint"])
            if self.config["ADEndpoint"]:
                env["activeDirectoryEndpointUrl"] = self.config["ADEndpoint"]
            cls = _driver_honouring_port(endpoint)
        # Signs in at once (client credentials grant); a refused secret is a 400/401 with AAD's reason.
        return cls(
            self.config["TenantId"],
            self.config["SubscriptionId"],
            secrets["client_id"],
            secrets["client_secret"],
            region=self.config["Location"],
            cloud_environment=env,
        )

    # -- ARM requests ----------------------------------------------------------------------------------------
    def rg_path(self):
        return f"/subscriptions/{self.config['SubscriptionId']}/resourceGroups/{self.config['ResourceGroup']}"

    def net(self, kind, name):
        return f"{self.rg_path()}/providers/Microsoft.Network/{kind}/{name}"

    def vm_path(self):
        return f"{self.rg_path()}/providers/Microsoft.Compute/virtualMachines/{self.node_name()}"

    def arm(self, conn, what, path, method="GET", data=None, api=NET_API, params=None):
        """An ARM request; returns the decoded body ("" when empty)."""
        from libcloud.common.exceptions import BaseHTTPError

        # Not self.rest(): ARM wants an api-version on every call and answers DELETEs with a bare 204.
        with self.api(what):
            try:
                return conn.connection.request(
                    path, params={"api-version": api, **(params or {})}, data=json_body(conn, data), method=method
                ).object
            except BaseHTTPError as e:
                if e.code == 204:  # libcloud counts "204 No Content" (e.g. a DELETE) as a failure
                    return ""
                raise

    def get_or_none(self, conn, what, path, api=NET_API):
        try:
            return self.arm(conn, what, path, api=api)
        except CloudNotFound:
            return None

    def wait_provisioned(self, conn, what, path, api=NET_API, timeout=300):
        deadline = time.monotonic() + timeout
        while True:
            res = self.arm(conn, what, path, api=api)
            state = res.get("properties", {}).get("provisioningState")
            if state == "Succeeded":
                return res
            if state == "Failed" or time.monotonic() > deadline:
                raise CloudError(f"{self.name}: {what}: provisioning state {state}")
            time.sleep(self.poll_interval)

    def check_access(self, conn):
        self.arm(conn, "checking the credentials", f"/subscriptions/{self.config['SubscriptionId']}", api=SUB_API)

    def resolve(self, conn):
        sub, loc = f"/subscriptions/{self.config['SubscriptionId']}", self.config["Location"]
        locations = {
            x["name"] for x in self.arm(conn, "listing locations", f"{sub}/locations", api=SUB_API).get("value", [])
        }
        if loc not in locations:
            raise CloudNotFound(f'{self.name}: unknown location "{loc}" (available: {", ".join(sorted(locations))})')
        compute = f"{sub}/providers/Microsoft.Compute/locations/{loc}"
        sizes = self.arm(conn, "listing VM sizes", f"{compute}/vmSizes", api=COMPUTE_API)
        if self.config["Size"] not in {s["name"] for s in sizes.get("value", [])}:
            raise CloudNotFound(f'{self.name}: size "{self.config["Size"]}" not offered in {loc}')
        publisher, offer, sku, version = self.config["Image"].split(":")
        versions = f"{compute}/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
        missing = CloudNotFound(f'{self.name}: image "{self.config["Image"]}" not found in {loc}')
        try:
            if version == "latest":
                if not self.arm(conn, "finding the image", versions, api=COMPUTE_API, params={"$top": "1"}):
                    raise missing
            else:
                self.arm(conn, "finding the image", f"{versions}/{version}", api=COMPUTE_API)
        except CloudNotFound:
            raise missing from None
        return {}

    # -- shared objects: resource group, network, security group ---------------------------------------------------
    def ensure_firewall(self, conn):
        loc = self.config["Location"]
        if self.get_or_none(conn, "looking up the resource group", self.rg_path(), RG_API) is None:
            self.arm(conn, "creating the resource group", self.rg_path(), "PUT", {"location": loc}, RG_API)
        vnet_path = self.net("virtualNetworks", self.config["VNet"])
        if self.get_or_none(conn, "looking up the virtual network", vnet_path) is None:
            self.arm(
                conn,
                "creating the virtual network",
                vnet_path,
                "PUT",
                {
                    "location": loc,
                    "properties": {
                        "addressSpace": {"addressPrefixes": [self.config["SubnetPrefix"]]},
                        "subnets": [
                            {
                                "name": self.config["Subnet"],
                                "properties": {"addressPrefix": self.config["SubnetPrefix"]},
                            }
                        ],
                    },
                },
            )
            self.wait_provisioned(conn, "creating the virtual network", vnet_path)
        name = self.config["FirewallName"]
        if not name:
            return
        path = self.net("networkSecurityGroups", name)
        nsg = self.get_or_none(conn, f'looking up security group "{name}"', path)
        rules = list((nsg or {}).get("properties", {}).get("securityRules", []))
        have = {
            (
                r["properties"].get("protocol"),
                r["properties"].get("destinationPortRange"),
                tuple(
                    sorted(r["properties"].get("sourceAddressPrefixes") or [r["properties"].get("sourceAddressPrefix")])
                ),
            )
            for r in rules
        }
        cidrs = tuple(sorted(self.config["SourceCIDRs"]))
        priority = max([r["properties"].get("priority", 100) for r in rules] + [100])
        changed = nsg is None
        for port, proto in self.ports():
            key = (proto.capitalize(), str(port), cidrs)
            if key in have:
                continue
            priority += 10
            changed = True
            rules.append(
                {
                    "name": f"dockyard-{proto}-{port}",
                    "properties": {
                        "protocol": proto.capitalize(),
                        "sourcePortRange": "*",
                        "destinationPortRange": str(port),
                        "sourceAddressPrefixes": list(cidrs),
                        "destinationAddressPrefix": "*",
                        "access": "Allow",
                        "priority": priority,
                        "direction": "Inbound",
                    },
                }
            )
        if changed:
            self.arm(
                conn,
                f'writing security group "{name}"',
                path,
                "PUT",
                {
                    "location": loc,
                    "tags": {"dockyard": "shared"} if nsg is None else (nsg.get("tags") or {}),
                    "properties": {"securityRules": rules},
                },
            )
        self.record(FirewallId=path, FirewallManaged=nsg is None or (nsg.get("tags") or {}).get("dockyard") == "shared")

    def release_firewall(self, conn):
        path = self.config.get("FirewallId")
        if not path:
            return
        nsg = self.get_or_none(conn, "checking whether the security group is still used", path)
        if nsg is not None:
            props = nsg.get("properties", {})
            if props.get("networkInterfaces") or props.get("subnets"):
                return  # still used: the last machine to go deletes it
            try:
                self.arm(conn, "deleting the security group", path, "DELETE")
            except CloudError:
                return
        self.record(FirewallId="", FirewallManaged=False)

    # -- the VM ------------------------------------------------------------------------------------------------------
    def create_node(self, conn, resolved, user_data):
        loc, n = self.config["Location"], self.node_name()
        subnet_id = f"{self.net('virtualNetworks', self.config['VNet'])}/subnets/{self.config['Subnet']}"
        ipconfig = {"subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic"}
        if not self.config["NoPublicIP"]:
            pip = self.net("publicIPAddresses", f"{n}-ip")
            self.record(FloatingIPId=pip)
            self.arm(
                conn,
                "creating the public IP",
                pip,
                "PUT",
                {
                    "location": loc,
                    "sku": {"name": "Standard"},
                    "properties": {"publicIPAllocationMethod": "Static", "deleteOption": "Delete"},
                },
            )
            self.wait_provisioned(conn, "creating the public IP", pip)
            ipconfig["publicIPAddress"] = {"id": pip, "properties": {"deleteOption": "Delete"}}
        nic = self.net("networkInterfaces", f"{n}-nic")
        nic_props = {"ipConfigurations": [{"name": "ipconfig1", "properties": ipconfig}]}
        if self.config.get("FirewallId"):
            nic_props["networkSecurityGroup"] = {"id": self.config["FirewallId"]}
        self.arm(conn, "creating the network interface", nic, "PUT", {"location": loc, "properties": nic_props})
        self.wait_provisioned(conn, "creating the network interface", nic)
        publisher, offer, sku, version = self.config["Image"].split(":")
        user = self.ssh_user()
        os_profile = {
            "computerName": n[:64],
            "adminUsername": user,
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {"publicKeys": [{"path": f"/home/{user}/.ssh/authorized_keys", "keyData": self.public_key}]},
            },
        }
        if user_data:
            os_profile["customData"] = base64.b64encode(user_data.encode()).decode()
        body = {
            "location": loc,
            "tags": {"dockyard-machine": self.machine_name, **key_value_tags(self.config["Tags"])},
            "properties": {
                "hardwareProfile": {"vmSize": self.config["Size"]},
                "storageProfile": {
                    "imageReference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
                    "osDisk": {
                        "createOption": "FromImage",
                        "diskSizeGB": self.config["DiskSize"],
                        "deleteOption": "Delete",
                        "managedDisk": {"storageAccountType": self.config["StorageType"]},
                    },
                },
                "osProfile": os_profile,
                "networkProfile": {"networkInterfaces": [{"id": nic, "properties": {"deleteOption": "Delete"}}]},
            },
        }
        self.record(NodeId=self.vm_path())
        self.arm(conn, "creating the VM", self.vm_path(), "PUT", body, COMPUTE_API)
        return self.get_node(conn)

    def get_node(self, conn):
        if not self.config.get("NodeId"):
            return None
        vm = self.get_or_none(conn, "looking up the VM", self.config["NodeId"] + "/instanceView", COMPUTE_API)
        if vm is None:
            return None
        codes = [s.get("code") for s in vm.get("statuses", [])]
        state = next((POWER[c] for c in codes if c in POWER), State.STARTING)
        public, private = [], []
        nic = self.get_or_none(
            conn, "reading the network interface", self.net("networkInterfaces", f"{self.node_name()}-nic")
        )
        for cfg in (nic or {}).get("properties", {}).get("ipConfigurations", []):
            if cfg["properties"].get("privateIPAddress"):
                private.append(cfg["properties"]["privateIPAddress"])
        if self.config.get("FloatingIPId"):
            pip = self.get_or_none(conn, "reading the public IP", self.config["FloatingIPId"])
            addr = (pip or {}).get("properties", {}).get("ipAddress")
            if addr:
                public.append(addr)
        return _VM(self.config["NodeId"], state, public, private)

    def map_state(self, node):
        return node.state

    def _vm_action(self, conn, action, what):
        self.arm(conn, what, f"{self.config['NodeId']}/{action}", "POST", {}, COMPUTE_API)

    def start_node(self, conn, node):
        self._vm_action(conn, "start", "starting the VM")

    def stop_node(self, conn, node):
        self._vm_action(conn, "deallocate", "stopping (deallocating) the VM")

    def kill_node(self, conn, node):
        self.arm(
            conn,
            "powering the VM off",
            f"{self.config['NodeId']}/powerOff",
            "POST",
            api=COMPUTE_API,
            params={"skipShutdown": "true"},
        )

    def reboot_node(self, conn, node):
        self._vm_action(conn, "restart", "restarting the VM")

    def destroy_node(self, conn, node):
        # deleteOption=Delete takes the NIC, the public IP and the OS disk along.
        self.arm(conn, "deleting the VM", self.config["NodeId"], "DELETE", api=COMPUTE_API)

    def find_orphan(self, conn):
        self.config["NodeId"] = self.vm_path()
        return self.get_node(conn)

    def node_name(self):
        return re.sub(r"[^a-zA-Z0-9-]", "-", self.machine_name)[:64]

    def _gone(self, conn, what, path, api, timeout):
        deadline = time.monotonic() + timeout
        while self.get_or_none(conn, what, path, api) is not None:
            if time.monotonic() > deadline:
                raise CloudError(f"{self.name}: {what}: still there after {timeout:.0f}s")
            time.sleep(self.poll_interval)

    def wait_gone(self, conn, node, timeout=RUNNING_TIMEOUT):
        # The VM's deletion is asynchronous and takes its NIC along; the security group can be deleted only
        # once no NIC refers to it.
        self._gone(conn, "waiting for the VM to be deleted", self.vm_path(), COMPUTE_API, timeout)
        self._gone(
            conn,
            "waiting for the network interface to be deleted",
            self.net("networkInterfaces", f"{self.node_name()}-nic"),
            NET_API,
            timeout,
        )

    def remove(self):
        requested = bool(self.config.get("NodeId") or self.config.get("CreateRequested"))
        super().remove()
        if not requested:
            return
        # A create that failed before the VM existed leaves its NIC and public IP (only a VM's deletion takes
        # them along); with them gone the security group may be free only now.
        conn = self.conn()
        leftovers = [self.net("networkInterfaces", f"{self.node_name()}-nic")]
        if self.config.get("FloatingIPId"):
            leftovers.append(self.config["FloatingIPId"])
        found = False
        for path in leftovers:
            if self.get_or_none(conn, "looking for leftovers of the VM", path) is not None:
                found = True
                try:
                    self.arm(conn, "deleting a leftover of the VM", path, "DELETE")
                except CloudError:
                    pass  # e.g. already being deleted: wait for it below
                self._gone(conn, "waiting for a leftover of the VM to be deleted", path, NET_API, RUNNING_TIMEOUT)
        self.record(FloatingIPId="")
        if found and self.config.get("FirewallManaged"):
            with self.shared_lock():
                self.release_firewall(conn)


def _driver_honouring_port(endpoint):
    """libcloud's Azure driver takes only the host from the Resource Manager URL and talks to port 443; an
    endpoint override with another port gets a connection that keeps the URL's port and scheme."""
    from libcloud.common.azure_arm import AzureResourceManagementConnection
    from libcloud.compute.drivers.azure_arm import AzureNodeDriver

    secure, _host, port, _path = endpoint

    class Connection(AzureResourceManagementConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.port, self.secure = port, int(secure)

    class Driver(AzureNodeDriver):
        connectionCls = Connection

    return Driver
