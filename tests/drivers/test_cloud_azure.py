"""The azure driver at libcloud's HTTP layer: a handwritten Azure AD token endpoint and Resource Manager API,
both over TLS with a CA made for the test. libcloud signs in on port 443 of the AD host whatever the URL
says, so the AD fake listens on 443 of a random 127.x.y.z address (root only; skipped otherwise); ARM is
on 127.0.0.1 at a random port (the driver keeps the endpoint's port). Recorded: the client-credentials
grant, resource group / network / security group rules, public IP, NIC, the VM body (size, image, location,
tags, admin key, custom data, disks) and the lifecycle calls."""

import base64
import re
import urllib.parse

import pytest

from tests.drivers.cloud_fakes import (
    FakeAPI,
    SSHBanner,
    ThrowawayCA,
    fake_api_on_port,
    loopback_only,
    make_driver,
    make_named_driver,
    run_cli,
)

pytest.importorskip("libcloud")

from dockyard.drivers.base import State  # noqa: E402
from dockyard.drivers.cloud.azure import AzureDriver  # noqa: E402
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError  # noqa: E402

TENANT, SUB = "72f988bf-0000-4000-8000-000000000001", "0b1f6471-0000-4000-8000-000000000002"
CLIENT_ID, SECRET = "11111111-0000-4000-8000-000000000003", "client~secret.value"
ARM_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.test.token"
APIS = {
    "resourceGroups": "2021-04-01",
    "Microsoft.Network": "2023-09-01",
    "Microsoft.Compute": "2024-03-01",
    "subscription": "2022-12-01",
}
NOT_FOUND = {"error": {"code": "ResourceNotFound", "message": "The Resource was not found."}}


class AzureModel:
    """Enough of login.microsoftonline.com (v1 token endpoint) and management.azure.com for one VM."""

    def __init__(self):
        self.grants, self.resources, self.vm_actions = [], {}, []
        self.fail_vm_create = None

    # -- Azure AD -------------------------------------------------------------------------------------------
    def login(self, r):
        form = dict(urllib.parse.parse_qsl(r.raw))
        self.grants.append(form)
        if r.path != f"/{TENANT}/oauth2/token":
            return 400, {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."}, {}
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
            "client_credentials",
            CLIENT_ID,
            SECRET,
        ):
            return (
                401,
                {
                    "error": "invalid_client",
                    "error_description": f"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
                    f"request is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{CLIENT_ID}'.",
                },
                {},
            )
        return (
            200,
            {
                "token_type": "Bearer",
                "expires_in": "3599",
                "expires_on": "4102444800",
                "resource": form.get("resource"),
                "access_token": ARM_TOKEN,
            },
            {},
        )

    # -- ARM ------------------------------------------------------------------------------------------------
    def api_version(self, p):
        if "/providers/Microsoft.Network/" in p:
            return APIS["Microsoft.Network"]
        if "/providers/Microsoft.Compute/" in p:
            return APIS["Microsoft.Compute"]
        if "/resourceGroups/" in p:
            return APIS["resourceGroups"]
        return APIS["subscription"]

    def nic_users(self, nsg_id):
        return [
            {"id": k}
            for k, v in self.resources.items()
            if "/networkInterfaces/" in k and v["properties"].get("networkSecurityGroup", {}).get("id") == nsg_id
        ]

    def view(self, rid):
        res = dict(self.resources[rid])
        if "/networkSecurityGroups/" in rid:
            res["properties"] = dict(res["properties"], networkInterfaces=self.nic_users(rid))
        return res

    def put(self, p, body):
        kind = p.split("/providers/")[-1].split("/")[1] if "/providers/" in p else "resourceGroups"
        res = dict(body, id=p, name=p.rsplit("/", 1)[1])
        props = dict(body.get("properties", {}), provisioningState="Succeeded")
        if kind == "publicIPAddresses":
            props["ipAddress"] = "127.0.0.1"
        if kind == "networkInterfaces":
            props["ipConfigurations"] = [
                dict(c, properties=dict(c["properties"], privateIPAddress="192.168.0.4"))
                for c in props["ipConfigurations"]
            ]
        if kind == "virtualMachines":
            if self.fail_vm_create:
                return self.fail_vm_create
            props["provisioningState"] = "Creating"
            res["power"] = "PowerState/starting"
        res["properties"] = props
        created = p not in self.resources
        self.resources[p] = res
        return (201 if created else 200), {k: v for k, v in res.items() if k != "power"}, {}

    def handle_arm(self, r):
        m, p = r.method, r.path
        if r.headers.get("authorization") != f"Bearer {ARM_TOKEN}":
            return 401, {"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}, {}
        want = self.api_version(p)
        if r.query.get("api-version") != want:
            return (
                400,
                {
                    "error": {
                        "code": "InvalidApiVersionParameter",
                        "message": f"The api-version '{r.query.get('api-version')}' is invalid.",
                    }
                },
                {},
            )
        sub = f"/subscriptions/{SUB}"
        if p == sub:
            return 200, {"id": sub, "subscriptionId": SUB, "displayName": "test", "state": "Enabled"}, {}
        if p == f"{sub}/locations":
            return 200, {"value": [{"name": n, "displayName": n} for n in ("westeurope", "northeurope")]}, {}
        compute = f"{sub}/providers/Microsoft.Compute/locations/westeurope"
        if p == f"{compute}/vmSizes":
            return (
                200,
                {
                    "value": [
                        {"name": n, "numberOfCores": 1, "memoryInMB": 1024} for n in ("Standard_B1s", "Standard_B2s")
                    ]
                },
                {},
            )
        match = re.fullmatch(
            re.escape(compute) + r"/publishers/([^/]+)/artifacttypes/vmimage/offers/([^/]+)"
            r"/skus/([^/]+)/versions(?:/([^/]+))?",
            p,
        )
        if match:
            known = match.group(1, 2, 3) in {("Canonical", "ubuntu-24_04-lts", "server"), ("Debian", "debian-12", "12")}
            if match.group(4):
                return (
                    (200, {"name": match.group(4), "location": "westeurope"}, {})
                    if known and match.group(4) == "12.20250113.1"
                    else (404, NOT_FOUND, {})
                )
            return 200, ([{"name": "24.04.202501140", "location": "westeurope"}] if known else []), {}
        vm_path = re.match(r".*/virtualMachines/[^/]+", p)
        if vm_path and self.resources.get(vm_path.group(0), {}).get("properties", {}).get("deleting"):
            self.delete_vm(vm_path.group(0))  # a deleted VM is gone at the next look
        vm = re.fullmatch(r"(.*/virtualMachines/[^/]+)/(instanceView|start|deallocate|powerOff|restart)", p)
        if vm:
            res = self.resources.get(vm.group(1))
            if res is None:
                return 404, NOT_FOUND, {}
            if vm.group(2) == "instanceView":
                statuses = [{"code": "ProvisioningState/succeeded"}, {"code": res["power"]}]
                res["power"] = {
                    "PowerState/starting": "PowerState/running",
                    "PowerState/deallocating": "PowerState/deallocated",
                }.get(res["power"], res["power"])
                return 200, {"statuses": statuses}, {}
            self.vm_actions.append((vm.group(2), dict(r.query)))
            res["power"] = {
                "start": "PowerState/starting",
                "deallocate": "PowerState/deallocating",
                "powerOff": "PowerState/stopped",
                "restart": "PowerState/running",
            }[vm.group(2)]
            return 202, None, {"Location": f"https://{r.headers['host']}/operations/1"}
        if m == "PUT":
            return self.put(p, r.json)
        if p not in self.resources:
            return 404, NOT_FOUND, {}
        if m == "GET":
            return 200, {k: v for k, v in self.view(p).items() if k != "power"}, {}
        if m == "DELETE":
            if "/virtualMachines/" in p:
                self.resources[p]["properties"]["deleting"] = True
                return 202, None, {}
            if "/networkSecurityGroups/" in p and self.nic_users(p):
                return (
                    400,
                    {
                        "error": {
                            "code": "InUseNetworkSecurityGroupCannotBeDeleted",
                            "message": f"Network security group {p} cannot be deleted because it is in "
                            "use by some resources.",
                        }
                    },
                    {},
                )
            del self.resources[p]
            return 200, None, {}
        return 405, {"error": {"code": "MethodNotAllowed", "message": m}}, {}

    def delete_vm(self, path):
        vm = self.resources.pop(path)
        for nic in vm["properties"]["networkProfile"]["networkInterfaces"]:  # deleteOption: Delete
            gone = self.resources.pop(nic["id"])
            for cfg in gone["properties"]["ipConfigurations"]:
                pip = cfg["properties"].get("publicIPAddress")
                if pip:
                    self.resources.pop(pip["id"], None)

    def handle(self, r):
        if r.path.endswith("/oauth2/token"):
            return self.login(r)
        return self.handle_arm(r)


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    loopback_only(monkeypatch)
    ca = ThrowawayCA(tmp_path)
    ca.trust_in_libcloud(monkeypatch)
    model = AzureModel()
    login = fake_api_on_port(model, 443, context_for=ca.server_context)
    if login is None:
        pytest.skip("cannot listen on port 443 of a loopback address (libcloud signs in to Azure AD there)")
    arm = FakeAPI(model, ssl_context=ca.server_context("127.0.0.1"))
    for k, v in {"AZURE_CLIENT_ID": CLIENT_ID, "AZURE_CLIENT_SECRET": SECRET}.items():
        monkeypatch.setenv(k, v)  # the "env" credential source: nothing stored
    yield model, login, arm
    login.close()
    arm.close()


@pytest.fixture
def banner():
    b = SSHBanner()
    yield b
    b.close()


def flags(login, arm, banner=None, **extra):
    values = dict(
        azure_endpoint=arm.url,
        azure_ad_endpoint=f"https://{login.host}",
        azure_subscription_id=SUB,
        azure_tenant_id=TENANT,
        azure_client_id=CLIENT_ID,
        azure_client_secret=SECRET,
    )
    if banner is not None:
        values["azure_ssh_port"] = banner.port
    values.update(extra)
    return values


def puts(arm, kind):
    return [r for r in arm.calls("PUT") if f"/{kind}/" in r.path or r.path.endswith(f"/{kind}")]


def test_create_lifecycle_and_remove(cloud, banner, tmp_path):
    model, login, arm = cloud
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\npackages: [htop]\n")
    d = make_driver(
        AzureDriver,
        tmp_path,
        **flags(
            login,
            arm,
            banner,
            azure_size="Standard_B2s",
            azure_tags="team,blue",
            azure_userdata=str(ud),
            azure_source_cidr=("203.0.113.0/24", "198.51.100.7/32"),
            azure_open_port=("8080",),
            azure_disk_size=40,
        ),
    )
    d.pre_create_check()
    d.create()

    grant = model.grants[0]
    assert grant["client_id"] == CLIENT_ID and grant["resource"] == "https://management.core.windows.net/"
    assert all(r.path == f"/{TENANT}/oauth2/token" for r in login.requests)

    rg = f"/subscriptions/{SUB}/resourceGroups/dockyard"
    [rg_put] = [r for r in arm.calls("PUT") if r.path == rg]
    assert rg_put.json == {"location": "westeurope"}
    [vnet] = puts(arm, "virtualNetworks")
    assert vnet.json["properties"]["subnets"] == [
        {"name": "dockyard", "properties": {"addressPrefix": "192.168.0.0/16"}}
    ]
    [nsg] = puts(arm, "networkSecurityGroups")
    assert nsg.path == f"{rg}/providers/Microsoft.Network/networkSecurityGroups/dockyard-nsg"
    rules = [x["properties"] for x in nsg.json["properties"]["securityRules"]]
    assert [
        (x["protocol"], x["destinationPortRange"], x["sourceAddressPrefixes"], x["access"], x["direction"])
        for x in rules
    ] == [
        ("Tcp", str(banner.port), ["198.51.100.7/32", "203.0.113.0/24"], "Allow", "Inbound"),
        ("Tcp", "2376", ["198.51.100.7/32", "203.0.113.0/24"], "Allow", "Inbound"),
        ("Tcp", "8080", ["198.51.100.7/32", "203.0.113.0/24"], "Allow", "Inbound"),
    ]
    assert len({x["priority"] for x in rules}) == 3
    [pip] = puts(arm, "publicIPAddresses")
    assert pip.json["sku"] == {"name": "Standard"}
    [nic] = puts(arm, "networkInterfaces")
    assert nic.json["properties"]["networkSecurityGroup"]["id"] == nsg.path
    ipcfg = nic.json["properties"]["ipConfigurations"][0]["properties"]
    assert ipcfg["publicIPAddress"]["id"] == pip.path and ipcfg["subnet"]["id"].endswith("/subnets/dockyard")

    [vm] = puts(arm, "virtualMachines")
    assert vm.path == f"{rg}/providers/Microsoft.Compute/virtualMachines/m1"
    body = vm.json
    assert body["location"] == "westeurope" and body["tags"] == {"dockyard-machine": "m1", "team": "blue"}
    props = body["properties"]
    assert props["hardwareProfile"] == {"vmSize": "Standard_B2s"}
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    assert props["storageProfile"]["osDisk"]["diskSizeGB"] == 40
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    os_profile = props["osProfile"]
    assert os_profile["adminUsername"] == "docker-user"
    assert os_profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert os_profile["linuxConfiguration"]["ssh"]["publicKeys"] == [
        {"path": "/home/docker-user/.ssh/authorized_keys", "keyData": (tmp_path / "id_ed25519.pub").read_text().strip()}
    ]
    assert base64.b64decode(os_profile["customData"]).decode() == ud.read_text()
    assert props["networkProfile"]["networkInterfaces"] == [{"id": nic.path, "properties": {"deleteOption": "Delete"}}]

    assert d.ip() == "127.0.0.1" and d.config["PrivateIPAddress"] == "192.168.0.4"
    assert d.state() == State.RUNNING
    assert SECRET not in (tmp_path / "cloud-resources.json").read_text()
    d.stop()
    assert d.state() == State.STOPPED
    d.start()
    d.kill()
    assert d.state() == State.STOPPED
    d.start()
    d.restart()
    assert d.state() == State.RUNNING
    assert model.vm_actions == [
        ("deallocate", {"api-version": "2024-03-01"}),
        ("start", {"api-version": "2024-03-01"}),
        ("powerOff", {"api-version": "2024-03-01", "skipShutdown": "true"}),
        ("start", {"api-version": "2024-03-01"}),
        ("restart", {"api-version": "2024-03-01"}),
    ]

    d.remove()
    # The resource group and network stay (shared, cheap); the VM, its NIC and IP and the unused NSG are gone.
    assert sorted(model.resources) == [rg, f"{rg}/providers/Microsoft.Network/virtualNetworks/dockyard-vnet"]
    d.remove()


def test_second_vm_reuses_the_nsg_which_stays_while_used(cloud, banner, tmp_path):
    model, login, arm = cloud
    a = make_named_driver(AzureDriver, "a", tmp_path, **flags(login, arm, banner))
    b = make_named_driver(
        AzureDriver,
        "b",
        tmp_path,
        **flags(login, arm, banner, azure_open_port=("9000",), azure_image="Debian:debian-12:12:12.20250113.1"),
    )
    for d in (a, b):
        d.pre_create_check()
        d.create()
    nsg_puts = puts(arm, "networkSecurityGroups")
    assert len(nsg_puts) == 2  # created, then one rule added
    assert [x["properties"]["destinationPortRange"] for x in nsg_puts[1].json["properties"]["securityRules"]] == [
        str(banner.port),
        "2376",
        "9000",
    ]
    assert (
        len(puts(arm, "virtualNetworks")) == 1
        and len([r for r in arm.calls("PUT") if r.path.endswith("/resourceGroups/dockyard")]) == 1
    )
    nsg = nsg_puts[0].path
    a.remove()
    assert nsg in model.resources
    b.remove()
    assert nsg not in model.resources


def test_half_created_vm_leftovers_are_removed(cloud, banner, tmp_path):
    model, login, arm = cloud
    model.fail_vm_create = (
        409,
        {
            "error": {
                "code": "OperationNotAllowed",
                "message": "Operation could not be completed as it results in exceeding approved "
                "standardBSFamily Cores quota.",
            }
        },
        {},
    )
    d = make_driver(AzureDriver, tmp_path, **flags(login, arm, banner))
    d.pre_create_check()
    with pytest.raises(DriverError, match="quota") as e:
        d.create()
    assert "\n" not in str(e.value)
    assert any("/networkInterfaces/" in k for k in model.resources)
    d.remove()
    assert not [
        k
        for k in model.resources
        if "/networkInterfaces/" in k or "/publicIPAddresses/" in k or "/networkSecurityGroups/" in k
    ]


def test_bad_secret_is_one_line(cloud, tmp_path, monkeypatch):
    _model, login, arm = cloud
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong")
    d = make_driver(AzureDriver, tmp_path, **flags(login, arm, azure_client_secret="wrong"))
    with pytest.raises(PreCreateCheckError, match="refused the credentials") as e:
        d.pre_create_check()
    assert e.value.exit_code == 3 and "AADSTS7000215" in str(e.value) and "\n" not in str(e.value)
    assert arm.requests == []


@pytest.mark.parametrize(
    "extra, text",
    [
        ({"azure_location": "marsnorth"}, 'unknown location "marsnorth"'),
        ({"azure_size": "Standard_Huge"}, 'size "Standard_Huge" not offered in westeurope'),
        ({"azure_image": "Plan9:plan9:4:latest"}, 'image "Plan9:plan9:4:latest" not found'),
        ({"azure_image": "Debian:debian-12:12:1.0.0"}, 'image "Debian:debian-12:12:1.0.0" not found'),
    ],
)
def test_unknown_location_size_image_fail_the_pre_create_check(cloud, tmp_path, extra, text):
    _model, login, arm = cloud
    d = make_driver(AzureDriver, tmp_path, **flags(login, arm, **extra))
    with pytest.raises(PreCreateCheckError, match=re.escape(text)) as e:
        d.pre_create_check()
    assert "\n" not in str(e.value)
    assert arm.calls("PUT") == []


def test_sign_in_endpoint_must_be_port_443(tmp_path, monkeypatch):
    loopback_only(monkeypatch)
    with pytest.raises(DriverError, match="port 443 only"):
        make_driver(
            AzureDriver,
            tmp_path,
            azure_subscription_id=SUB,
            azure_tenant_id=TENANT,
            azure_endpoint="https://127.0.0.1:8443",
            azure_ad_endpoint="https://127.0.0.1:9443",
        )


def test_cli_bad_secret_exit_3_with_one_line(cloud, tmp_path, capsys, monkeypatch):
    _model, login, arm = cloud
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong")
    code, out, err = run_cli(
        capsys,
        tmp_path / "store",
        "create",
        "-d",
        "azure",
        "--azure-endpoint",
        arm.url,
        "--azure-ad-endpoint",
        f"https://{login.host}",
        "--azure-subscription-id",
        SUB,
        "--azure-tenant-id",
        TENANT,
        "web1",
    )
    assert code == 3, (out, err)
    assert len(err.strip().splitlines()) == 1 and "AADSTS7000215" in err and "Traceback" not in err
    assert arm.requests == []
