"""The openstack driver at libcloud's HTTP layer: a handwritten Keystone v3 + Nova + Glance v2 + Neutron on
127.0.0.1 (one server, services told apart by path prefix as a service catalogue allows) records what we
send: key pair, security group and its rules, server body (flavor, image, network, zone, groups, metadata,
user data), floating IP, and the lifecycle calls."""

import base64
import json
import re
import urllib.parse
import uuid

import pytest

from tests.drivers.cloud_fakes import FakeAPI, SSHBanner, loopback_only, make_driver, make_named_driver, run_cli

pytest.importorskip("libcloud")

from dockyard.drivers.base import State  # noqa: E402
from dockyard.drivers.cloud.openstack import OpenStackDriver  # noqa: E402
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError  # noqa: E402

USER, PASSWORD, PROJECT, REGION = "demo", "s3cret-password", "demo-project", "RegionTwo"
TOKEN = "gAAAAABtesttoken"
NOW = "2025-01-15T12:00:00Z"


def _nf(what):
    return 404, {"itemNotFound": {"code": 404, "message": f"{what} could not be found."}}, {}


class OpenStackModel:
    """Enough of Keystone v3, Nova 2.1, Glance v2 and Neutron 2.0 for a server's life."""

    def __init__(self, floating_ip="127.0.0.1"):
        self.url = None  # set once the server listens (the catalogue points back at it)
        self.keypairs, self.servers, self.groups, self.rules, self.fips = {}, {}, {}, {}, {}
        self.floating_ip = floating_ip
        self.flavors = [
            {
                "id": "1",
                "name": "m1.small",
                "ram": 2048,
                "disk": 20,
                "vcpus": 1,
                "swap": "",
                "OS-FLV-EXT-DATA:ephemeral": 0,
                "os-flavor-access:is_public": True,
                "links": [],
            },
            {
                "id": "2",
                "name": "m1.medium",
                "ram": 4096,
                "disk": 40,
                "vcpus": 2,
                "swap": "",
                "OS-FLV-EXT-DATA:ephemeral": 0,
                "os-flavor-access:is_public": True,
                "links": [],
            },
        ]
        self.images = [
            {
                "id": "img-ubuntu-2404",
                "name": "Ubuntu 24.04",
                "status": "active",
                "visibility": "public",
                "min_disk": 0,
                "min_ram": 0,
                "created_at": NOW,
                "updated_at": NOW,
            },
            {
                "id": "img-debian-12",
                "name": "Debian 12",
                "status": "active",
                "visibility": "public",
                "min_disk": 0,
                "min_ram": 0,
                "created_at": NOW,
                "updated_at": NOW,
            },
        ]
        self.networks = [
            {
                "id": "net-private",
                "name": "private",
                "status": "ACTIVE",
                "subnets": ["sub-1"],
                "router:external": False,
                "tenant_id": "p1",
            },
            {
                "id": "net-public",
                "name": "public",
                "status": "ACTIVE",
                "subnets": ["sub-2"],
                "router:external": True,
                "tenant_id": "p1",
            },
        ]

    # -- Keystone -------------------------------------------------------------------------------------------
    def catalog(self):
        def svc(kind, name, path):
            return {
                "id": kind,
                "type": kind,
                "name": name,
                "endpoints": [
                    {
                        "id": f"{kind}-pub",
                        "interface": "public",
                        "region": REGION,
                        "region_id": REGION,
                        "url": self.url + path,
                    },
                    {
                        "id": f"{kind}-other",
                        "interface": "public",
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": "http://198.51.100.1:1/must-not-be-used",
                    },
                ],
            }

        return [
            svc("compute", "nova", "/compute/v2.1"),
            svc("image", "glance", "/image"),
            svc("network", "neutron", "/network"),
            svc("identity", "keystone", "/identity"),
        ]

    def auth(self, r):
        body = r.json["auth"]
        user = body["identity"]["password"]["user"]
        scope = body.get("scope", {}).get("project", {})
        if (user["name"], user["password"], user["domain"].get("name")) != (USER, PASSWORD, "Default") or scope.get(
            "name"
        ) != PROJECT:
            return (
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
                {},
            )
        token = {
            "methods": ["password"],
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": NOW,
            "user": {"id": "u1", "name": USER, "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "p1", "name": PROJECT, "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r1", "name": "member"}],
            "catalog": self.catalog(),
        }
        return 201, {"token": token}, {"X-Subject-Token": TOKEN}

    # -- Nova -----------------------------------------------------------------------------------------------
    def server_view(self, s):
        addresses = {"private": [{"addr": s["fixed_ip"], "version": 4, "OS-EXT-IPS:type": "fixed"}]}
        if s.get("floating_ip"):
            addresses["private"].append({"addr": s["floating_ip"], "version": 4, "OS-EXT-IPS:type": "floating"})
        elif s["public_ip"]:
            addresses["public"] = [{"addr": s["public_ip"], "version": 4, "OS-EXT-IPS:type": "fixed"}]
        return {
            "id": s["id"],
            "name": s["name"],
            "status": s["status"],
            "addresses": addresses,
            "created": NOW,
            "updated": NOW,
            "hostId": "h1",
            "tenant_id": "p1",
            "user_id": "u1",
            "image": {"id": s["imageRef"]},
            "flavor": {"id": s["flavorRef"]},
            "metadata": s.get("metadata", {}),
            "key_name": s.get("key_name"),
            "security_groups": s.get("security_groups", []),
            "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/servers/{s['id']}"}],
            "OS-EXT-AZ:availability_zone": s.get("availability_zone", "nova"),
            "accessIPv4": "",
            "accessIPv6": "",
            "config_drive": "",
        }

    def nova(self, m, p, r):
        if p == "/os-keypairs":
            if m == "GET":
                return 200, {"keypairs": [{"keypair": k} for k in self.keypairs.values()]}, {}
            k = dict(r.json["keypair"], fingerprint="aa:bb", user_id="u1", type="ssh")
            if k["name"] in self.keypairs:
                return 409, {"conflictingRequest": {"code": 409, "message": "Key pair already exists"}}, {}
            self.keypairs[k["name"]] = k
            return 200, {"keypair": k}, {}
        if p.startswith("/os-keypairs/") and m == "DELETE":
            name = urllib.parse.unquote(p.split("/", 2)[2])
            return (202, None, {}) if self.keypairs.pop(name, None) else _nf("Keypair")
        if p == "/flavors/detail":
            return 200, {"flavors": self.flavors}, {}
        if p == "/servers" and m == "POST":
            body = r.json["server"]
            s = dict(body, id=str(uuid.uuid4()), status="BUILD", fixed_ip="192.168.0.5", public_ip="127.0.0.1")
            if self.floating_ip_only:
                s["public_ip"] = ""
            self.servers[s["id"]] = s
            return (
                202,
                {
                    "server": {
                        "id": s["id"],
                        "adminPass": "x",
                        "links": [],
                        "security_groups": body.get("security_groups", []),
                    }
                },
                {},
            )
        match = re.fullmatch(r"/servers/([^/]+)(/action|/os-interface)?", p)
        if match:
            s = self.servers.get(match.group(1))
            if s is None:
                return _nf("Instance")
            if match.group(2) == "/os-interface":
                return (
                    200,
                    {
                        "interfaceAttachments": [
                            {
                                "port_id": f"port-{s['id']}",
                                "net_id": "net-private",
                                "port_state": "ACTIVE",
                                "mac_addr": "fa:16:3e:00:00:01",
                                "fixed_ips": [{"ip_address": s["fixed_ip"]}],
                            }
                        ]
                    },
                    {},
                )
            if m == "GET":
                if s["status"] == "DELETING":
                    del self.servers[s["id"]]  # gone at the second look
                    return _nf("Instance")
                view = self.server_view(s)
                s["status"] = {"BUILD": "ACTIVE", "HARD_REBOOT": "ACTIVE"}.get(s["status"], s["status"])
                return 200, {"server": view}, {}
            if m == "DELETE":
                s["status"] = "DELETING"
                return 204, None, {}
            action = next(iter(r.json))
            s["status"] = {"os-stop": "SHUTOFF", "os-start": "ACTIVE", "reboot": "HARD_REBOOT"}[action]
            s.setdefault("actions", []).append(r.json)
            return 202, None, {}
        return 404, {"itemNotFound": {"code": 404, "message": f"no route {m} {p}"}}, {}

    floating_ip_only = False

    # -- Glance ---------------------------------------------------------------------------------------------
    def glance(self, m, p, r):
        if p == "/v2/images":
            return 200, {"images": self.images, "first": "/v2/images", "schema": "/v2/schemas/images"}, {}
        return 404, {"message": f"no route {m} {p}"}, {}

    # -- Neutron --------------------------------------------------------------------------------------------
    def group_view(self, g):
        return dict(g, security_group_rules=[x for x in self.rules.values() if x["security_group_id"] == g["id"]])

    def neutron(self, m, p, r):
        if p == "/v2.0/networks":
            nets = self.networks
            if r.query.get("router:external") == "True":
                nets = [{"id": n["id"], "name": n["name"]} for n in nets if n["router:external"]]
            return 200, {"networks": nets}, {}
        if p == "/v2.0/security-groups":
            if m == "GET":
                return 200, {"security_groups": [self.group_view(g) for g in self.groups.values()]}, {}
            g = dict(r.json["security_group"], id=str(uuid.uuid4()), tenant_id="p1", project_id="p1")
            self.groups[g["id"]] = g
            for eth in ("IPv4", "IPv6"):  # Neutron adds the default egress rules itself
                rid = str(uuid.uuid4())
                self.rules[rid] = {
                    "id": rid,
                    "security_group_id": g["id"],
                    "direction": "egress",
                    "ethertype": eth,
                    "protocol": None,
                    "port_range_min": None,
                    "port_range_max": None,
                    "remote_ip_prefix": None,
                    "remote_group_id": None,
                    "tenant_id": "p1",
                }
            return 201, {"security_group": self.group_view(g)}, {}
        if p.startswith("/v2.0/security-groups/") and m == "DELETE":
            gid = p.rsplit("/", 1)[1]
            g = self.groups.get(gid)
            if g is None:
                return 404, {"NeutronError": {"type": "SecurityGroupNotFound", "message": "not found"}}, {}
            if any({"name": g["name"]} in s.get("security_groups", []) for s in self.servers.values()):
                return (
                    409,
                    {
                        "NeutronError": {
                            "type": "SecurityGroupInUse",
                            "detail": "",
                            "message": f"Security Group {gid} in use.",
                        }
                    },
                    {},
                )
            del self.groups[gid]
            for rid in [k for k, v in self.rules.items() if v["security_group_id"] == gid]:
                del self.rules[rid]
            return 204, None, {}
        if p == "/v2.0/security-group-rules" and m == "POST":
            rule = dict(r.json["security_group_rule"], id=str(uuid.uuid4()), tenant_id="p1")
            rule.pop("remote_group_id", None)
            if rule["remote_ip_prefix"] == "0.0.0.0/0":
                rule["remote_ip_prefix"] = None  # how current Neutron stores "anywhere"
            for old in self.rules.values():
                if all(
                    old.get(k) == rule[k]
                    for k in (
                        "security_group_id",
                        "direction",
                        "protocol",
                        "port_range_min",
                        "port_range_max",
                        "remote_ip_prefix",
                    )
                ):
                    return (
                        409,
                        {
                            "NeutronError": {
                                "type": "SecurityGroupRuleExists",
                                "message": f"Security group rule already exists. Rule id is {old['id']}.",
                            }
                        },
                        {},
                    )
            self.rules[rule["id"]] = rule
            return 201, {"security_group_rule": rule}, {}
        if p == "/v2.0/floatingips":
            if m == "GET":
                return 200, {"floatingips": list(self.fips.values())}, {}
            fip = {
                "id": str(uuid.uuid4()),
                "floating_ip_address": self.floating_ip,
                "port_id": None,
                "floating_network_id": r.json["floatingip"]["floating_network_id"],
                "status": "DOWN",
            }
            self.fips[fip["id"]] = fip
            return 201, {"floatingip": fip}, {}
        match = re.fullmatch(r"/v2.0/floatingips/([^/]+)", p)
        if match:
            fip = self.fips.get(match.group(1))
            if fip is None:
                return 404, {"NeutronError": {"type": "FloatingIPNotFound", "message": "not found"}}, {}
            if m == "DELETE":
                del self.fips[fip["id"]]
                return 204, None, {}
            fip["port_id"] = r.json["floatingip"]["port_id"]
            for s in self.servers.values():
                if f"port-{s['id']}" == fip["port_id"]:
                    s["floating_ip"] = fip["floating_ip_address"]
            return 200, {"floatingip": fip}, {}
        return 404, {"NeutronError": {"type": "HTTPNotFound", "message": f"no route {m} {p}"}}, {}

    def handle(self, r):
        if r.path == "/identity/v3/auth/tokens" and r.method == "POST":
            return self.auth(r)
        if r.headers.get("x-auth-token") != TOKEN:
            return 401, {"error": {"code": 401, "title": "Unauthorized", "message": "bad token"}}, {}
        for prefix, service in (("/compute/v2.1", self.nova), ("/image", self.glance), ("/network", self.neutron)):
            if r.path.startswith(prefix + "/"):
                return service(r.method, r.path[len(prefix) :], r)
        return 404, {"message": f"no service at {r.path}"}, {}


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    loopback_only(monkeypatch)


@pytest.fixture
def api():
    model = OpenStackModel()
    server = FakeAPI(model)
    model.url = server.url
    yield server
    server.close()


@pytest.fixture
def banner():
    b = SSHBanner()
    yield b
    b.close()


@pytest.fixture(autouse=True)
def _creds(monkeypatch):
    # Values equal to the env vars: the "env" credential source, nothing is written to a keyring.
    monkeypatch.setenv("OS_USERNAME", USER)
    monkeypatch.setenv("OS_PASSWORD", PASSWORD)


def flags(api, banner=None, **extra):
    values = dict(
        openstack_auth_url=api.url + "/identity/v3",
        openstack_username=USER,
        openstack_password=PASSWORD,
        openstack_tenant_name=PROJECT,
        openstack_region=REGION,
        openstack_flavor_name="m1.small",
    )
    if banner is not None:
        values["openstack_ssh_port"] = banner.port
    values.update(extra)
    return values


def test_create_lifecycle_and_remove(api, banner, tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\npackages: [jq]\n")
    d = make_driver(
        OpenStackDriver,
        tmp_path,
        **flags(
            api,
            banner,
            openstack_flavor_name="m1.medium",
            openstack_image_name="Debian 12",
            openstack_net_name="private",
            openstack_availability_zone="az-2",
            openstack_tags="team,blue",
            openstack_userdata=str(ud),
            openstack_source_cidr=("198.51.100.0/24",),
            openstack_open_port=("8080",),
        ),
    )
    d.pre_create_check()
    d.create()
    m = api.model

    # Every request carried Keystone's token; the other region's endpoints were never used.
    assert all(r.path.startswith(("/compute/", "/image/", "/network/", "/identity/")) for r in api.requests)
    [auth] = api.calls("POST", path="/identity/v3/auth/tokens")[:1]
    assert auth.json["auth"]["scope"]["project"]["name"] == PROJECT

    [kp] = api.calls("POST", path="/compute/v2.1/os-keypairs")
    assert kp.json["keypair"]["public_key"] == (tmp_path / "id_ed25519.pub").read_text().strip()
    assert re.fullmatch(r"dockyard-m1-[0-9a-f]{8}", kp.json["keypair"]["name"])

    [sg] = api.calls("POST", path="/network/v2.0/security-groups")
    assert sg.json["security_group"]["name"] == "dockyard"
    rules = [r.json["security_group_rule"] for r in api.calls("POST", path="/network/v2.0/security-group-rules")]
    assert [
        (x["direction"], x["protocol"], x["port_range_min"], x["port_range_max"], x["remote_ip_prefix"]) for x in rules
    ] == [
        ("ingress", "tcp", banner.port, banner.port, "198.51.100.0/24"),
        ("ingress", "tcp", 2376, 2376, "198.51.100.0/24"),
        ("ingress", "tcp", 8080, 8080, "198.51.100.0/24"),
    ]
    assert {x["security_group_id"] for x in rules} == {d.config["FirewallId"]}

    [create] = api.calls("POST", path="/compute/v2.1/servers")
    body = create.json["server"]
    assert (body["name"], body["flavorRef"], body["imageRef"]) == ("m1", "2", "img-debian-12")
    assert body["networks"] == [{"uuid": "net-private"}] and body["availability_zone"] == "az-2"
    assert body["key_name"] == kp.json["keypair"]["name"]
    assert body["security_groups"] == [{"name": "dockyard"}]
    assert body["metadata"] == {"dockyard-machine": "m1", "team": "blue"}
    assert base64.b64decode(body["user_data"]).decode() == ud.read_text()

    assert d.ip() == "127.0.0.1" and d.config["PrivateIPAddress"] == "192.168.0.5"
    assert d.state() == State.RUNNING
    assert PASSWORD not in json.dumps(d.to_config()) and PASSWORD not in (tmp_path / "cloud-resources.json").read_text()

    d.stop()
    assert d.state() == State.STOPPED
    d.start()
    d.kill()
    assert d.state() == State.STOPPED
    d.start()
    d.restart()
    assert d.state() == State.RUNNING
    [server] = m.servers.values()
    assert server["actions"] == [
        {"os-stop": None},
        {"os-start": None},
        {"os-stop": None},
        {"os-start": None},
        {"reboot": {"type": "HARD"}},
    ]

    d.remove()
    # Server, key pair and (now unused) group are gone; the group was deleted only after the server was.
    assert m.servers == {} and m.keypairs == {} and m.groups == {}
    deletes = [r.path for r in api.requests if r.method == "DELETE"]
    assert deletes[0].startswith("/compute/v2.1/servers/") and deletes[-1].startswith("/network/v2.0/security-groups/")
    d.remove()  # nothing left: no error, no request
    assert [r.path for r in api.requests if r.method == "DELETE"] == deletes


def test_floating_ip_is_taken_attached_and_released(api, banner, tmp_path):
    api.model.floating_ip_only = True  # the server's own address is private; SSH goes to the floating IP
    d = make_driver(OpenStackDriver, tmp_path, **flags(api, banner, openstack_floatingip_pool="public"))
    d.pre_create_check()
    d.create()
    [fip] = api.model.fips.values()
    [take] = api.calls("POST", path="/network/v2.0/floatingips")
    assert take.json == {"floatingip": {"floating_network_id": "net-public"}}
    [server] = api.model.servers.values()
    assert fip["port_id"] == f"port-{server['id']}"
    assert d.ip() == "127.0.0.1" and d.config["PrivateIPAddress"] == "192.168.0.5"
    d.restart()
    assert d.ip() == "127.0.0.1"  # still the floating address after the provider's view is re-read
    d.remove()
    assert api.model.fips == {} and api.model.servers == {}


def test_floating_ip_from_a_private_range_is_still_the_public_address(tmp_path):
    """libcloud calls 172.24.4.0/24 private; Nova labels it floating. The driver must SSH to it (here the
    loopback guard refuses it, so create stops at waiting for SSH) and rm -f must release it."""
    from dockyard.provisioner.core.errors import SSHTimeout

    model = OpenStackModel(floating_ip="172.24.4.10")
    model.floating_ip_only = True
    server = FakeAPI(model)
    model.url = server.url
    try:
        d = make_driver(
            OpenStackDriver, tmp_path, **flags(server, openstack_floatingip_pool="public", openstack_ssh_timeout=1)
        )
        d.pre_create_check()
        with pytest.raises(SSHTimeout, match="waiting for SSH on 172.24.4.10:22"):
            d.create()
        assert d.config["IPAddress"] == "172.24.4.10" and d.config["PrivateIPAddress"] == "192.168.0.5"
        d.restart()  # the addresses are read back from Nova: the floating one is still the public one
        assert d.ip() == "172.24.4.10" and d.config["PrivateIPAddress"] == "192.168.0.5"
        d.remove()
        assert model.fips == {} and model.servers == {} and model.keypairs == {}
    finally:
        server.close()


def test_shared_group_is_reused_and_kept_while_used(api, banner, tmp_path):
    a = make_named_driver(OpenStackDriver, "a", tmp_path, **flags(api, banner))
    b = make_named_driver(OpenStackDriver, "b", tmp_path, **flags(api, banner, openstack_open_port=("53/udp",)))
    for d in (a, b):
        d.pre_create_check()
        d.create()
    assert len(api.calls("POST", path="/network/v2.0/security-groups")) == 1
    rules = [r.json["security_group_rule"] for r in api.calls("POST", path="/network/v2.0/security-group-rules")]
    # b adds only its extra port; "anywhere" stored by Neutron as null still counts as present.
    assert [(x["protocol"], x["port_range_min"], x["remote_ip_prefix"]) for x in rules] == [
        ("tcp", banner.port, "0.0.0.0/0"),
        ("tcp", 2376, "0.0.0.0/0"),
        ("udp", 53, "0.0.0.0/0"),
    ]
    a.remove()
    assert len(api.model.groups) == 1 and len(api.model.servers) == 1  # b still uses the group
    b.remove()
    assert api.model.groups == {} and api.model.keypairs == {}


def test_bad_credentials_one_line(api, tmp_path, monkeypatch):
    monkeypatch.setenv("OS_PASSWORD", "wrong")
    d = make_driver(OpenStackDriver, tmp_path, **flags(api, openstack_password="wrong"))
    with pytest.raises(PreCreateCheckError, match="refused the credentials") as e:
        d.pre_create_check()
    assert e.value.exit_code == 3 and "\n" not in str(e.value) and "wrong" not in str(e.value)
    assert api.calls("POST", path="/compute/v2.1/servers") == []


@pytest.mark.parametrize(
    "extra, text",
    [
        ({"openstack_flavor_name": "m1.huge"}, 'flavor "m1.huge" not found'),
        ({"openstack_image_name": "Plan 9"}, 'image "Plan 9" not found'),
        ({"openstack_net_name": "nonet"}, 'network "nonet" not found'),
        ({"openstack_floatingip_pool": "nopool"}, 'floating IP pool "nopool" not found'),
        ({"openstack_region": "Mars"}, 'region "Mars"'),
    ],
)
def test_unknown_names_fail_the_pre_create_check(api, tmp_path, extra, text):
    d = make_driver(OpenStackDriver, tmp_path, **flags(api, **extra))
    with pytest.raises(PreCreateCheckError, match=re.escape(text)) as e:
        d.pre_create_check()
    assert "\n" not in str(e.value)
    assert api.calls("POST", "/compute/") == [] and api.calls("POST", "/network/") == []


def test_required_flags(tmp_path, api):
    with pytest.raises(DriverError, match="--openstack-auth-url"):
        make_driver(OpenStackDriver, tmp_path, openstack_flavor_name="m1.small")
    with pytest.raises(DriverError, match="--openstack-tenant-name"):
        make_driver(OpenStackDriver, tmp_path, **flags(api, openstack_tenant_name=None))


def test_cli_bad_credentials_exit_3_with_one_line(api, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OS_PASSWORD", "wrong")
    monkeypatch.setenv("DOCKYARD_CREDENTIALS_FILE", str(tmp_path / "creds.json"))
    code, out, err = run_cli(
        capsys,
        tmp_path / "store",
        "create",
        "-d",
        "openstack",
        "--openstack-auth-url",
        api.url + "/identity/v3",
        "--openstack-tenant-name",
        PROJECT,
        "--openstack-region",
        REGION,
        "--openstack-flavor-name",
        "m1.small",
        "web1",
    )
    assert code == 3, (out, err)
    assert len(err.strip().splitlines()) == 1 and "refused the credentials" in err and "Traceback" not in err
    assert api.calls("POST", path="/compute/v2.1/servers") == []
    assert not (tmp_path / "creds.json").exists()
