"""The linode and vultr drivers at libcloud's HTTP layer: handwritten API models on 127.0.0.1 record what
we send (instance body, firewall rules, key, user data, tags)."""

import base64
import re

import pytest

from tests.drivers.cloud_fakes import FakeAPI, SSHBanner, loopback_only, make_driver

pytest.importorskip("libcloud")

from dockyard.drivers.base import State  # noqa: E402
from dockyard.drivers.cloud.linode import LinodeDriver  # noqa: E402
from dockyard.drivers.cloud.vultr import VultrDriver  # noqa: E402
from dockyard.provisioner.core.errors import PreCreateCheckError  # noqa: E402

TOKEN = "linode-test-token"
VKEY = "VULTRTESTKEY"
NOT_FOUND: tuple[int, dict, dict] = (404, {"errors": [{"reason": "Not found"}]}, {})


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    loopback_only(monkeypatch)


@pytest.fixture
def banner():
    b = SSHBanner()
    yield b
    b.close()


class LinodeModel:
    def __init__(self):
        self.instances, self.firewalls = {}, {}
        self.next_id = 500

    def _inst(self, i):
        return {
            "id": i["id"],
            "label": i["label"],
            "status": i["status"],
            "region": i["region"],
            "type": i["type"],
            "image": i["image"],
            "ipv4": ["127.0.0.1", "192.168.130.5"],
            "ipv6": "2600:3c03::1/128",
            "tags": i["tags"],
            "created": "2025-01-15T12:00:00",
            "updated": "2025-01-15T12:00:00",
            "hypervisor": "kvm",
            "specs": {"disk": 25600, "memory": 1024, "vcpus": 1, "transfer": 1000},
            "alerts": {},
            "backups": {"enabled": False},
            "watchdog_enabled": True,
            "group": "",
        }

    def handle(self, r):
        if r.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"errors": [{"reason": "Invalid Token"}]}, {}
        m, p = r.method, r.path
        if p == "/v4/profile":
            return 200, {"username": "tester"}, {}
        if p == "/v4/regions":
            return 200, {"data": [{"id": "us-east"}, {"id": "eu-central"}], "page": 1, "pages": 1}, {}
        if p == "/v4/linode/types":
            return 200, {"data": [{"id": "g6-nanode-1"}, {"id": "g6-standard-2"}], "page": 1, "pages": 1}, {}
        if p.startswith("/v4/images/"):
            return (200, {"id": "linode/ubuntu24.04"}, {}) if p.endswith("ubuntu24.04") else NOT_FOUND
        if p == "/v4/networking/firewalls":
            if m == "GET":
                return 200, {"data": list(self.firewalls.values()), "page": 1, "pages": 1}, {}
            self.next_id += 1
            fw = dict(r.json, id=self.next_id, status="enabled")
            self.firewalls[fw["id"]] = fw
            return 200, fw, {}
        match = re.fullmatch(r"/v4/networking/firewalls/(\d+)(/devices)?", p)
        if match:
            fw_id = int(match.group(1))
            if match.group(2):
                devs = [
                    {"entity": {"id": i["id"], "type": "linode"}}
                    for i in self.instances.values()
                    if i.get("firewall_id") == fw_id
                ]
                return 200, {"data": devs, "page": 1, "pages": 1}, {}
            self.firewalls.pop(fw_id)
            return 200, {}, {}
        if p == "/v4/linode/instances" and m == "GET":
            return 200, {"data": [self._inst(i) for i in self.instances.values()], "page": 1, "pages": 1}, {}
        if p == "/v4/linode/instances" and m == "POST":
            self.next_id += 1
            inst = dict(r.json, id=self.next_id, status="provisioning")
            self.instances[inst["id"]] = inst
            return 200, self._inst(inst), {}
        match = re.fullmatch(r"/v4/linode/instances/(\d+)(?:/(\w+))?", p)
        if match:
            inst = self.instances.get(int(match.group(1)))
            if inst is None:
                return NOT_FOUND
            verb = match.group(2)
            if m == "GET":
                if inst["status"] == "provisioning":
                    inst["status"] = "running"
                return 200, self._inst(inst), {}
            if m == "DELETE":
                del self.instances[inst["id"]]
                return 200, {}, {}
            inst["status"] = {"boot": "running", "shutdown": "offline", "reboot": "running"}[verb]
            return 200, {}, {}
        return 404, {"errors": [{"reason": f"no route {m} {p}"}]}, {}


def test_linode_create_lifecycle_and_remove(banner, tmp_path, monkeypatch):
    api = FakeAPI(LinodeModel())
    try:
        monkeypatch.setenv("LINODE_TOKEN", TOKEN)
        ud = tmp_path / "ud"
        ud.write_text("#cloud-config\npackages: [jq]\n")
        d = make_driver(
            LinodeDriver,
            tmp_path,
            linode_token=TOKEN,
            linode_endpoint=api.url,
            linode_region="eu-central",
            linode_instance_type="g6-standard-2",
            linode_tags="a,b",
            linode_userdata=str(ud),
            linode_ssh_port=banner.port,
            linode_create_private_ip=True,
            linode_source_cidr=("192.0.2.0/24",),
        )
        d.pre_create_check()
        d.create()
        [fw] = api.calls("POST", path="/v4/networking/firewalls")
        rules = fw.json["rules"]
        assert rules["inbound_policy"] == "DROP" and rules["outbound_policy"] == "ACCEPT"
        assert [(r["protocol"], r["ports"], r["addresses"]["ipv4"]) for r in rules["inbound"]] == [
            ("TCP", str(banner.port), ["192.0.2.0/24"]),
            ("TCP", "2376", ["192.0.2.0/24"]),
        ]
        [create] = api.calls("POST", path="/v4/linode/instances")
        body = create.json
        assert (body["region"], body["type"], body["image"], body["label"]) == (
            "eu-central",
            "g6-standard-2",
            "linode/ubuntu24.04",
            "dy-m1",
        )
        assert body["authorized_keys"] == [(tmp_path / "id_ed25519.pub").read_text().strip()]
        assert body["tags"] == ["a", "b"] and body["private_ip"] is True
        assert body["firewall_id"] == int(d.config["FirewallId"])
        assert base64.b64decode(body["metadata"]["user_data"]).decode() == ud.read_text()
        root_pass = body["root_pass"]
        assert len(root_pass) >= 32 and root_pass not in (tmp_path / "cloud-resources.json").read_text()
        assert d.ip() == "127.0.0.1" and d.state() == State.RUNNING
        d.stop()
        assert d.state() == State.STOPPED
        d.start()
        d.restart()
        verbs = [r.path.rsplit("/", 1)[1] for r in api.calls("POST", "/v4/linode/instances/")]
        assert verbs == ["shutdown", "boot", "reboot"]
        d.remove()
        assert api.model.instances == {} and api.model.firewalls == {}
    finally:
        api.close()


class VultrModel:
    def __init__(self):
        self.instances, self.keys, self.groups, self.rules = {}, {}, {}, {}
        self.n = 0

    def _id(self):
        self.n += 1
        return f"00000000-0000-4000-8000-{self.n:012d}"

    def _inst(self, i):
        return {
            "id": i["id"],
            "os": "Ubuntu 24.04 LTS x64",
            "ram": 1024,
            "disk": 25,
            "main_ip": "127.0.0.1",
            "vcpu_count": 1,
            "region": i["region"],
            "plan": i["plan"],
            "date_created": "2025-01-15T12:00:00+00:00",
            "status": "active",
            "power_status": i["power"],
            "server_status": "ok",
            "allowed_bandwidth": 1000,
            "netmask_v4": "255.255.254.0",
            "gateway_v4": "127.0.0.254",
            "v6_network": "",
            "v6_main_ip": "",
            "v6_network_size": 0,
            "label": i["label"],
            "internal_ip": "10.1.96.3",
            "kvm": "",
            "hostname": i["label"],
            "tag": "",
            "tags": i.get("tags", []),
            "os_id": i["os_id"],
            "app_id": 0,
            "image_id": "",
            "firewall_group_id": i.get("firewall_group_id", ""),
            "features": [],
        }

    def handle(self, r):
        if r.headers.get("authorization") != f"Bearer {VKEY}":
            return 401, {"error": "Invalid API token.", "status": 401}, {}
        m, p = r.method, r.path
        meta = {"total": 0, "links": {"next": "", "prev": ""}}
        if p == "/v2/account":
            return 200, {"account": {"name": "t"}}, {}
        if p == "/v2/regions":
            return 200, {"regions": [{"id": "ewr"}, {"id": "fra"}], "meta": meta}, {}
        if p == "/v2/plans":
            return 200, {"plans": [{"id": "vc2-1c-1gb"}, {"id": "vc2-2c-4gb"}], "meta": meta}, {}
        if p == "/v2/os":
            return (
                200,
                {
                    "os": [
                        {"id": 2284, "name": "Ubuntu 24.04 LTS x64"},
                        {"id": 2136, "name": "Debian 12 x64 (bookworm)"},
                    ],
                    "meta": meta,
                },
                {},
            )
        if p == "/v2/ssh-keys":
            if m == "GET":
                return 200, {"ssh_keys": list(self.keys.values()), "meta": meta}, {}
            k = {
                "id": self._id(),
                "name": r.json["name"],
                "ssh_key": r.json["ssh_key"],
                "date_created": "2025-01-15T12:00:00+00:00",
            }
            self.keys[k["id"]] = k
            return 201, {"ssh_key": k}, {}
        if p.startswith("/v2/ssh-keys/") and m == "DELETE":
            self.keys.pop(p.rsplit("/", 1)[1])
            return 204, None, {}
        if p == "/v2/firewalls":
            if m == "GET":
                return 200, {"firewall_groups": list(self.groups.values()), "meta": meta}, {}
            g = {"id": self._id()[:8], "description": r.json["description"], "instance_count": 0}
            self.groups[g["id"]] = g
            self.rules[g["id"]] = []
            return 201, {"firewall_group": g}, {}
        match = re.fullmatch(r"/v2/firewalls/([^/]+)(/rules)?", p)
        if match:
            gid = match.group(1)
            if match.group(2):
                if m == "GET":
                    return 200, {"firewall_rules": self.rules[gid], "meta": meta}, {}
                self.rules[gid].append(dict(r.json, id=len(self.rules[gid]) + 1))
                return 201, {"firewall_rule": self.rules[gid][-1]}, {}
            if m == "GET":
                g = dict(
                    self.groups[gid],
                    instance_count=sum(1 for i in self.instances.values() if i.get("firewall_group_id") == gid),
                )
                return 200, {"firewall_group": g}, {}
            self.groups.pop(gid)
            return 204, None, {}
        if p == "/v2/instances" and m == "GET":
            return 200, {"instances": [self._inst(i) for i in self.instances.values()], "meta": meta}, {}
        if p == "/v2/instances" and m == "POST":
            inst = dict(r.json, id=self._id(), power="running")
            self.instances[inst["id"]] = inst
            return 202, {"instance": self._inst(inst)}, {}
        if p == "/v2/instances/halt":
            for i in r.json["instance_ids"]:
                self.instances[i]["power"] = "stopped"
            return 204, None, {}
        match = re.fullmatch(r"/v2/instances/([^/]+)(?:/(\w+))?", p)
        if match:
            inst = self.instances.get(match.group(1))
            if inst is None:
                return 404, {"error": "Not found", "status": 404}, {}
            if m == "GET":
                return 200, {"instance": self._inst(inst)}, {}
            if m == "DELETE":
                del self.instances[inst["id"]]
                return 204, None, {}
            inst["power"] = "running"
            return 204, None, {}
        return 404, {"error": f"no route {m} {p}", "status": 404}, {}


def test_vultr_create_lifecycle_and_remove(banner, tmp_path, monkeypatch):
    api = FakeAPI(VultrModel())
    try:
        monkeypatch.setenv("VULTR_API_KEY", VKEY)
        d = make_driver(
            VultrDriver,
            tmp_path,
            vultr_api_key=VKEY,
            vultr_endpoint=api.url,
            vultr_region="fra",
            vultr_plan="vc2-2c-4gb",
            vultr_tags="x",
            vultr_ssh_port=banner.port,
            vultr_open_port=("53/udp",),
        )
        d.pre_create_check()
        d.create()
        [key] = api.calls("POST", path="/v2/ssh-keys")
        assert key.json["ssh_key"] == (tmp_path / "id_ed25519.pub").read_text().strip()
        [group] = api.calls("POST", path="/v2/firewalls")
        assert group.json == {"description": "dockyard"}
        rules = [
            (r.json["protocol"], r.json["port"], r.json["subnet"], r.json["subnet_size"])
            for r in api.calls("POST", "/v2/firewalls/")
        ]
        assert rules == [
            ("tcp", str(banner.port), "0.0.0.0", 0),
            ("tcp", "2376", "0.0.0.0", 0),
            ("udp", "53", "0.0.0.0", 0),
        ]
        [create] = api.calls("POST", path="/v2/instances")
        body = create.json
        assert (body["region"], body["plan"], body["os_id"], body["label"]) == ("fra", "vc2-2c-4gb", 2284, "m1")
        assert body["sshkey_id"] == [d.config["KeyPairId"]] and body["tags"] == ["x"]
        assert body["firewall_group_id"] == d.config["FirewallId"]
        assert d.state() == State.RUNNING and d.ip() == "127.0.0.1"
        d.stop()
        assert d.state() == State.STOPPED
        d.start()
        assert d.state() == State.RUNNING
        d.remove()
        assert api.model.instances == {} and api.model.keys == {} and api.model.groups == {}
    finally:
        api.close()


def test_vultr_unknown_os_and_bad_key(tmp_path, monkeypatch):
    api = FakeAPI(VultrModel())
    try:
        monkeypatch.setenv("VULTR_API_KEY", VKEY)
        d = make_driver(VultrDriver, tmp_path, vultr_api_key=VKEY, vultr_endpoint=api.url, vultr_os="Plan 9")
        with pytest.raises(PreCreateCheckError, match='unknown operating system "Plan 9"'):
            d.pre_create_check()
        monkeypatch.setenv("VULTR_API_KEY", "nope")
        d = make_driver(VultrDriver, tmp_path, vultr_api_key="nope", vultr_endpoint=api.url)
        with pytest.raises(PreCreateCheckError, match="refused the credentials"):
            d.pre_create_check()
    finally:
        api.close()


@pytest.mark.parametrize("provider", ["linode", "vultr"])
def test_rm_finds_a_node_whose_id_was_never_recorded(tmp_path, monkeypatch, provider):
    """A create killed between the provider's answer and recording the id: rm finds the node by its name
    (through libcloud's public list_nodes) and deletes it."""
    if provider == "linode":
        api, cls, key, inst = FakeAPI(LinodeModel()), LinodeDriver, TOKEN, {"id": 7, "status": "running"}
        inst.update(label="dy-m1", region="us-east", type="g6-nanode-1", image="linode/ubuntu24.04", tags=[])
        other = dict(inst, id=8, label="someone-else")
    else:
        api, cls, key, inst = FakeAPI(VultrModel()), VultrDriver, VKEY, {"id": "abc", "power": "running"}
        inst.update(label="m1", region="fra", plan="vc2-2c-4gb", os_id=2284, tags=[])
        other = dict(inst, id="def", label="someone-else")
    try:
        monkeypatch.setenv("LINODE_TOKEN" if provider == "linode" else "VULTR_API_KEY", key)
        api.model.instances = {inst["id"]: inst, other["id"]: other}
        flags = {f"{provider}_endpoint": api.url, f"{provider}_firewall": ""}
        flags["linode_token" if provider == "linode" else "vultr_api_key"] = key
        if provider == "vultr":
            flags.update(vultr_region="fra", vultr_plan="vc2-2c-4gb")
        d = make_driver(cls, tmp_path, **flags)
        d.pre_create_check()  # chooses the credentials, as create does
        d.record(NodeName=d.node_name(), CreateRequested=True)
        d.remove()
        assert list(api.model.instances) == [other["id"]]
    finally:
        api.close()
