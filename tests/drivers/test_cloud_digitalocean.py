"""The digitalocean driver at libcloud's HTTP layer: a handwritten DigitalOcean v2 API on 127.0.0.1 records
what we send (key, firewall, droplet) and the droplet's address points at a local SSH banner."""

import re

import pytest

from tests.drivers.cloud_fakes import FakeAPI, SSHBanner, loopback_only, make_driver

pytest.importorskip("libcloud")

from dockyard.drivers.base import State  # noqa: E402
from dockyard.drivers.cloud.digitalocean import DigitalOceanDriver  # noqa: E402
from dockyard.provisioner.core.errors import PreCreateCheckError  # noqa: E402

TOKEN = "dop_v1_test_token_0123456789"


IMAGE = {
    "id": 160232537,
    "name": "24.04 (LTS) x64",
    "distribution": "Ubuntu",
    "slug": "ubuntu-24-04-x64",
    "public": True,
    "regions": ["nyc3", "ams3", "fra1"],
    "created_at": "2024-08-05T18:27:48Z",
    "min_disk_size": 7,
    "type": "base",
    "size_gigabytes": 2.36,
    "status": "available",
}


class DigitalOceanModel:
    """Enough of api.digitalocean.com/v2 for one droplet's life."""

    def __init__(self):
        self.droplets, self.keys, self.firewalls = {}, {}, {}
        self.next_id = 1000

    def _id(self):
        self.next_id += 1
        return self.next_id

    def _droplet(self, d):
        return {
            "id": d["id"],
            "name": d["name"],
            "status": d["status"],
            "memory": 1024,
            "vcpus": 1,
            "disk": 25,
            "region": {"slug": d["region"], "name": d["region"]},
            "image": IMAGE,
            "locked": False,
            "size_slug": d["size"],
            "tags": d["tags"],
            "created_at": "2025-01-15T12:00:00Z",
            "features": [],
            "networks": {
                "v4": [{"ip_address": "127.0.0.1", "type": "public"}, {"ip_address": "10.116.0.2", "type": "private"}],
                "v6": [],
            },
        }

    def handle(self, r):
        if r.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"id": "Unauthorized", "message": "Unable to authenticate you"}, {}
        m, p = r.method, r.path
        if m == "GET" and p == "/v2/regions":
            return (
                200,
                {
                    "regions": [
                        {"slug": s, "name": s, "available": True, "sizes": ["s-1vcpu-1gb"], "features": []}
                        for s in ("nyc3", "ams3", "fra1")
                    ],
                    "links": {},
                    "meta": {"total": 3},
                },
                {},
            )
        if m == "GET" and p == "/v2/sizes":
            return (
                200,
                {
                    "sizes": [
                        {
                            "slug": s,
                            "memory": 1024,
                            "vcpus": 1,
                            "disk": 25,
                            "transfer": 1.0,
                            "price_monthly": 6.0,
                            "price_hourly": 0.009,
                            "regions": ["nyc3", "ams3"],
                            "available": True,
                        }
                        for s in ("s-1vcpu-1gb", "s-2vcpu-2gb")
                    ],
                    "links": {},
                    "meta": {"total": 2},
                },
                {},
            )
        if m == "GET" and p.startswith("/v2/images/"):
            slug = p.rsplit("/", 1)[1]
            if slug != "ubuntu-24-04-x64":
                return 404, {"id": "not_found", "message": "The resource you were accessing could not be found."}, {}
            return 200, {"image": IMAGE}, {}
        if m == "GET" and p == "/v2/account/keys":
            return 200, {"ssh_keys": list(self.keys.values()), "links": {}, "meta": {"total": len(self.keys)}}, {}
        if m == "POST" and p == "/v2/account/keys":
            k = dict(r.json, id=self._id(), fingerprint="3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa")
            self.keys[k["id"]] = k
            return 201, {"ssh_key": k}, {}
        if m == "DELETE" and p.startswith("/v2/account/keys/"):
            return (204, None, {}) if self.keys.pop(int(p.rsplit("/", 1)[1]), None) else (404, {"message": "nf"}, {})
        if m == "GET" and p == "/v2/firewalls":
            return 200, {"firewalls": list(self.firewalls.values()), "links": {}, "meta": {}}, {}
        if m == "POST" and p == "/v2/firewalls":
            fw = dict(r.json, id=f"fw-{self._id()}", status="succeeded", droplet_ids=[])
            self.firewalls[fw["id"]] = fw
            return 202, {"firewall": fw}, {}
        if m == "POST" and re.fullmatch(r"/v2/firewalls/[^/]+/rules", p):
            self.firewalls[p.split("/")[3]]["inbound_rules"] += r.json["inbound_rules"]
            return 204, None, {}
        if m == "DELETE" and p.startswith("/v2/firewalls/"):
            self.firewalls.pop(p.rsplit("/", 1)[1])
            return 204, None, {}
        if m == "GET" and p == "/v2/droplets":
            tag = r.query.get("tag_name")
            ds = [self._droplet(d) for d in self.droplets.values() if not tag or tag in d["tags"]]
            return 200, {"droplets": ds, "links": {}, "meta": {"total": len(ds)}}, {}
        if m == "POST" and p == "/v2/droplets":
            d = dict(r.json, id=self._id(), status="new")
            self.droplets[d["id"]] = d
            return 202, {"droplet": self._droplet(d)}, {}
        match = re.fullmatch(r"/v2/droplets/(\d+)(/actions)?", p)
        if match:
            d = self.droplets.get(int(match.group(1)))
            if d is None:
                return 404, {"id": "not_found", "message": "The resource you requested could not be found."}, {}
            if m == "GET":
                if d["status"] == "new":
                    d["status"] = "active"  # booted by the next look
                return 200, {"droplet": self._droplet(d)}, {}
            if m == "DELETE":
                del self.droplets[d["id"]]
                return 204, None, {}
            kind = r.json["type"]
            d["status"] = {"power_on": "active", "shutdown": "off", "power_off": "off", "reboot": "active"}[kind]
            return 201, {"action": {"id": self._id(), "status": "in-progress", "type": kind}}, {}
        return 404, {"id": "not_found", "message": f"no route {m} {p}"}, {}


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    loopback_only(monkeypatch)


@pytest.fixture
def api():
    server = FakeAPI(DigitalOceanModel())
    yield server
    server.close()


@pytest.fixture
def banner():
    b = SSHBanner()
    yield b
    b.close()


def test_create_sends_size_image_region_firewall_tags_userdata(api, banner, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
    ud = tmp_path / "ud.yaml"
    ud.write_text("#cloud-config\n")
    d = make_driver(
        DigitalOceanDriver,
        tmp_path,
        digitalocean_access_token=TOKEN,
        digitalocean_endpoint=api.url,
        digitalocean_size="s-2vcpu-2gb",
        digitalocean_region="ams3",
        digitalocean_tags="web,prod",
        digitalocean_userdata=str(ud),
        digitalocean_ssh_port=banner.port,
        digitalocean_open_port=("8080",),
        digitalocean_source_cidr=("203.0.113.0/24",),
        digitalocean_private_networking=True,
    )
    d.pre_create_check()
    d.create()

    [key] = api.calls("POST", path="/v2/account/keys")
    assert key.json["public_key"] == (tmp_path / "id_ed25519.pub").read_text().strip()
    assert re.fullmatch(r"dockyard-m1-[0-9a-f]{8}", key.json["name"])
    [fw] = api.calls("POST", path="/v2/firewalls")
    assert fw.json["name"] == "dockyard" and fw.json["tags"] == ["dockyard"]
    assert [(r["protocol"], r["ports"], r["sources"]["addresses"]) for r in fw.json["inbound_rules"]] == [
        ("tcp", str(banner.port), ["203.0.113.0/24"]),
        ("tcp", "2376", ["203.0.113.0/24"]),
        ("tcp", "8080", ["203.0.113.0/24"]),
    ]
    [create] = api.calls("POST", path="/v2/droplets")
    body = create.json
    assert (body["size"], body["image"], body["region"], body["name"]) == (
        "s-2vcpu-2gb",
        "ubuntu-24-04-x64",
        "ams3",
        "m1",
    )
    assert body["tags"] == ["dockyard", "web", "prod"] and body["user_data"] == "#cloud-config\n"
    assert body["ssh_keys"] == [api.model.keys[int(d.config["KeyPairId"])]["id"]] and body["private_networking"]
    assert d.ip() == "127.0.0.1" and d.config["PrivateIPAddress"] == "10.116.0.2"
    assert d.state() == State.RUNNING
    assert TOKEN not in (tmp_path / "cloud-resources.json").read_text()

    d.stop()
    assert d.state() == State.STOPPED
    d.start()
    d.kill()
    d.restart()
    kinds = [r.json["type"] for r in api.calls("POST", "/v2/droplets/")]
    assert kinds == ["shutdown", "power_on", "power_off", "reboot"]
    assert d.state() == State.RUNNING

    d.remove()
    assert api.model.droplets == {} and api.model.keys == {} and api.model.firewalls == {}
    d.remove()  # again: nothing left, no error


def test_second_machine_reuses_the_firewall_which_stays_while_used(api, banner, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
    drivers = []
    for name, ports in (("a", ()), ("b", ("9000",))):
        (tmp_path / name).mkdir()
        d = make_driver(
            DigitalOceanDriver,
            tmp_path / name,
            digitalocean_access_token=TOKEN,
            digitalocean_endpoint=api.url,
            digitalocean_ssh_port=banner.port,
            digitalocean_open_port=ports,
        )
        d.pre_create_check()
        d.create()
        drivers.append(d)
    assert len(api.calls("POST", path="/v2/firewalls")) == 1
    [added] = api.calls("POST", "/v2/firewalls/fw-")
    assert [(r["ports"], r["sources"]["addresses"]) for r in added.json["inbound_rules"]] == [("9000", ["0.0.0.0/0"])]
    drivers[0].remove()
    assert len(api.model.firewalls) == 1
    drivers[1].remove()
    assert api.model.firewalls == {}


def test_bad_token_and_unknown_names_are_one_line(api, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", "wrong")
    d = make_driver(DigitalOceanDriver, tmp_path, digitalocean_access_token="wrong", digitalocean_endpoint=api.url)
    with pytest.raises(PreCreateCheckError, match="refused the credentials") as e:
        d.pre_create_check()
    assert "\n" not in str(e.value)
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
    for flags, text in (
        ({"digitalocean_region": "mars1"}, 'unknown region "mars1"'),
        ({"digitalocean_size": "huge"}, 'unknown size "huge"'),
        ({"digitalocean_image": "plan9"}, "plan9"),
    ):
        d = make_driver(
            DigitalOceanDriver, tmp_path, digitalocean_access_token=TOKEN, digitalocean_endpoint=api.url, **flags
        )
        with pytest.raises(PreCreateCheckError, match=re.escape(text)):
            d.pre_create_check()
    assert api.calls("POST") == []
