"""The google driver at libcloud's HTTP layer: a handwritten Compute Engine v1 API and OAuth token endpoint,
served over TLS on 127.0.0.1 with a CA made for the test (libcloud talks HTTPS to Google), records what we
send: the signed service-account token request (its RS256 signature is checked with the account's public
key), the firewall rule, the instance body (machine type, image, zone, tags, labels, ssh-keys and user-data
metadata, disk) and the lifecycle calls."""

import base64
import json
import re
import urllib.parse

import pytest

from tests.drivers.cloud_fakes import (
    FakeAPI,
    SSHBanner,
    ThrowawayCA,
    loopback_only,
    make_driver,
    make_named_driver,
    run_cli,
)

pytest.importorskip("libcloud")

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402

from dockyard.drivers.base import State  # noqa: E402
from dockyard.drivers.cloud.google import GoogleDriver  # noqa: E402
from dockyard.provisioner.core.errors import PreCreateCheckError  # noqa: E402

PROJECT, ZONE = "dockyard-test-4711", "europe-west1-b"
EMAIL = f"dockyard@{PROJECT}.iam.gserviceaccount.com"
ACCESS_TOKEN = "ya29.test-access-token"
FAMILY_IMAGE = "ubuntu-2404-noble-amd64-v20250110"


def _b64json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


class GCEModel:
    """Enough of compute/v1 and the OAuth2 JWT-bearer grant for one instance's life."""

    def __init__(self, public_key):
        self.public_key = public_key  # the service account's: token requests signed otherwise are refused
        self.url = None
        self.instances, self.disks, self.firewalls = {}, {}, {}
        self.grants = []
        self.n = 0

    def base(self, project=PROJECT):
        return f"{self.url}/compute/v1/projects/{project}"

    def _id(self):
        self.n += 1
        return str(7000000000000000000 + self.n)

    def op(self, scope="global"):
        self.n += 1
        return {
            "kind": "compute#operation",
            "id": self._id(),
            "name": f"operation-{self.n}",
            "status": "DONE",
            "progress": 100,
            "selfLink": f"{self.base()}/{scope}/operations/operation-{self.n}",
        }

    def not_found(self, what):
        return (
            404,
            {
                "error": {
                    "code": 404,
                    "message": f"The resource '{what}' was not found",
                    "errors": [
                        {"reason": "notFound", "message": f"The resource '{what}' was not found", "domain": "global"}
                    ],
                }
            },
            {},
        )

    # -- OAuth2 --------------------------------------------------------------------------------------------
    def token(self, r):
        form = dict(urllib.parse.parse_qsl(r.raw))
        bad = (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, {})
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type"}, {}
        header, claims, signature = form["assertion"].split(".")
        try:
            self.public_key.verify(
                base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                f"{header}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return bad
        claims = _b64json(claims)
        self.grants.append(claims)
        if claims["iss"] != EMAIL or "https://www.googleapis.com/auth/compute" not in claims["scope"].split():
            return bad
        return 200, {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3599}, {}

    # -- compute ------------------------------------------------------------------------------------------
    def zone(self, name):
        return {
            "kind": "compute#zone",
            "id": "2100",
            "name": name,
            "status": "UP",
            "region": f"{self.base()}/regions/europe-west1",
            "selfLink": f"{self.base()}/zones/{name}",
        }

    def instance_view(self, i):
        z = f"{self.base()}/zones/{ZONE}"
        return {
            "kind": "compute#instance",
            "id": i["id"],
            "name": i["name"],
            "zone": z,
            "status": i["status"],
            "machineType": i["machineType"],
            "tags": dict(i.get("tags", {}), fingerprint="fp"),
            "labels": i.get("labels", {}),
            "metadata": i.get("metadata", {}),
            "scheduling": i.get("scheduling", {}),
            "creationTimestamp": "2025-01-15T04:00:00.000-08:00",
            "selfLink": f"{z}/instances/{i['name']}",
            "disks": [
                {
                    "boot": True,
                    "type": "PERSISTENT",
                    "autoDelete": True,
                    "deviceName": i["name"],
                    "source": f"{z}/disks/{i['name']}",
                }
            ],
            "networkInterfaces": [
                {
                    "network": i["networkInterfaces"][0]["network"],
                    "networkIP": "10.132.0.7",
                    "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT", "natIP": "127.0.0.1"}]
                    if i["networkInterfaces"][0].get("accessConfigs")
                    else [],
                }
            ],
        }

    def compute(self, m, p, r, project):
        if project != PROJECT:
            if m == "GET" and p == "/global/images/family/ubuntu-2404-lts-amd64" and project == "ubuntu-os-cloud":
                return (
                    200,
                    {
                        "kind": "compute#image",
                        "id": "8100",
                        "name": FAMILY_IMAGE,
                        "status": "READY",
                        "family": "ubuntu-2404-lts-amd64",
                        "creationTimestamp": "2025-01-10T00:00:00.000-08:00",
                        "selfLink": f"{self.base('ubuntu-os-cloud')}/global/images/{FAMILY_IMAGE}",
                    },
                    {},
                )
            if m == "GET" and p == "/global/images/debian-12-bookworm-v20250113" and project == "debian-cloud":
                return (
                    200,
                    {
                        "kind": "compute#image",
                        "id": "8200",
                        "name": p.rsplit("/", 1)[1],
                        "status": "READY",
                        "creationTimestamp": "2025-01-13T00:00:00.000-08:00",
                        "selfLink": f"{self.base('debian-cloud')}{p}",
                    },
                    {},
                )
            return self.not_found(f"projects/{project}{p}")
        if p == "/zones":
            return 200, {"kind": "compute#zoneList", "items": [self.zone(z) for z in (ZONE, "us-central1-a")]}, {}
        match = re.fullmatch(r"/zones/([^/]+)", p)
        if match:
            return (
                (200, self.zone(match.group(1)), {})
                if match.group(1) in (ZONE, "us-central1-a")
                else self.not_found(f"projects/{PROJECT}/zones/{match.group(1)}")
            )
        match = re.fullmatch(r"/zones/([^/]+)/machineTypes/([^/]+)", p)
        if match:
            if match.group(2) not in ("e2-small", "e2-standard-2"):
                return self.not_found(f"projects/{PROJECT}/zones/{match.group(1)}/machineTypes/{match.group(2)}")
            return (
                200,
                {
                    "kind": "compute#machineType",
                    "id": "3100",
                    "name": match.group(2),
                    "guestCpus": 2,
                    "memoryMb": 2048,
                    "zone": match.group(1),
                    "selfLink": f"{self.base()}{p}",
                },
                {},
            )
        match = re.fullmatch(r"/zones/([^/]+)/diskTypes/([^/]+)", p)
        if match:
            return (
                200,
                {
                    "kind": "compute#diskType",
                    "name": match.group(2),
                    "validDiskSize": "10GB-65536GB",
                    "zone": f"{self.base()}/zones/{match.group(1)}",
                    "selfLink": f"{self.base()}{p}",
                },
                {},
            )
        match = re.fullmatch(r"/global/networks/([^/]+)", p)
        if match:
            if match.group(1) != "default":
                return self.not_found(f"projects/{PROJECT}/global/networks/{match.group(1)}")
            return (
                200,
                {
                    "kind": "compute#network",
                    "id": "4100",
                    "name": "default",
                    "autoCreateSubnetworks": True,
                    "selfLink": f"{self.base()}{p}",
                },
                {},
            )
        if p == "/global/firewalls" and m == "POST":
            fw = dict(r.json, id=self._id(), kind="compute#firewall", selfLink=f"{self.base()}{p}/{r.json['name']}")
            self.firewalls[fw["name"]] = fw
            return 200, self.op(), {}
        match = re.fullmatch(r"/global/firewalls/([^/]+)", p)
        if match:
            fw = self.firewalls.get(match.group(1))
            if fw is None:
                return self.not_found(f"projects/{PROJECT}/global/firewalls/{match.group(1)}")
            if m == "GET":
                return 200, fw, {}
            if m == "DELETE":
                del self.firewalls[fw["name"]]
            else:
                self.firewalls[fw["name"]] = dict(r.json, id=fw["id"], kind=fw["kind"], selfLink=fw["selfLink"])
            return 200, self.op(), {}
        if re.fullmatch(r"/(global|zones/[^/]+)/operations/[^/]+", p):
            return (
                200,
                {
                    "kind": "compute#operation",
                    "status": "DONE",
                    "name": p.rsplit("/", 1)[1],
                    "selfLink": f"{self.base()}{p}",
                },
                {},
            )
        if p in ("/aggregated/disks", "/aggregated/instances"):
            kind = p.rsplit("/", 1)[1]
            items = list(
                (
                    self.disks if kind == "disks" else {k: self.instance_view(v) for k, v in self.instances.items()}
                ).values()
            )
            return (
                200,
                {
                    "kind": f"compute#{kind}AggregatedList",
                    "items": {f"zones/{ZONE}": {kind: items} if items else {"warning": {"code": "NO_RESULTS"}}},
                },
                {},
            )
        if p == f"/zones/{ZONE}/instances" and m == "POST":
            body = r.json
            if body["name"] in self.instances:
                return (
                    409,
                    {"error": {"code": 409, "message": "already exists", "errors": [{"reason": "alreadyExists"}]}},
                    {},
                )
            i = dict(body, id=self._id(), status="PROVISIONING")
            self.instances[i["name"]] = i
            init = body["disks"][0]["initializeParams"]
            self.disks[i["name"]] = {
                "kind": "compute#disk",
                "id": self._id(),
                "name": init["diskName"],
                "sizeGb": str(init["diskSizeGb"]),
                "status": "READY",
                "type": init["diskType"],
                "sourceImage": init["sourceImage"],
                "zone": f"{self.base()}/zones/{ZONE}",
                "selfLink": f"{self.base()}/zones/{ZONE}/disks/{init['diskName']}",
            }
            return 200, self.op(f"zones/{ZONE}"), {}
        match = re.fullmatch(rf"/zones/{ZONE}/instances/([^/]+)(/start|/stop|/reset)?", p)
        if match:
            i = self.instances.get(match.group(1))
            if i is None:
                return self.not_found(f"projects/{PROJECT}/zones/{ZONE}/instances/{match.group(1)}")
            if m == "GET":
                view = self.instance_view(i)
                i["status"] = {"PROVISIONING": "RUNNING", "STOPPING": "TERMINATED"}.get(i["status"], i["status"])
                return 200, view, {}
            if m == "DELETE":
                del self.instances[i["name"]]
                self.disks.pop(i["name"], None)  # autoDelete
                return 200, self.op(f"zones/{ZONE}"), {}
            verb = match.group(2)[1:]
            i.setdefault("verbs", []).append(verb)
            i["status"] = {"start": "RUNNING", "stop": "STOPPING", "reset": "RUNNING"}[verb]
            return 200, self.op(f"zones/{ZONE}"), {}
        return self.not_found(f"projects/{project}{p} ({m})")

    def handle(self, r):
        if r.path == "/o/oauth2/token" and r.method == "POST":
            return self.token(r)
        if r.headers.get("authorization") != f"Bearer {ACCESS_TOKEN}":
            return (
                401,
                {
                    "error": {
                        "code": 401,
                        "message": "Request had invalid authentication credentials.",
                        "errors": [{"reason": "authError", "message": "Invalid Credentials"}],
                    }
                },
                {},
            )
        match = re.fullmatch(r"/compute/v1/projects/([^/]+)(/.*)", r.path)
        if not match:
            return self.not_found(r.path)
        return self.compute(r.method, match.group(2), r, match.group(1))


def service_account(path, key, email=EMAIL):
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": email,
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return str(path)


@pytest.fixture(scope="module")
def sa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def api(tmp_path, monkeypatch, sa_key):
    loopback_only(monkeypatch)
    ca = ThrowawayCA(tmp_path)
    ca.trust_in_libcloud(monkeypatch)
    model = GCEModel(sa_key.public_key())
    server = FakeAPI(model, ssl_context=ca.server_context("127.0.0.1"))
    model.url = server.url
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # libcloud's token cache
    yield server
    server.close()


@pytest.fixture
def banner():
    b = SSHBanner()
    yield b
    b.close()


@pytest.fixture
def creds(tmp_path, monkeypatch, sa_key):
    path = service_account(tmp_path / "sa.json", sa_key)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", path)  # the "env" source: nothing stored
    return path


def flags(api, creds, banner=None, **extra):
    values = dict(google_endpoint=api.url, google_credentials_file=creds, google_project=PROJECT, google_zone=ZONE)
    if banner is not None:
        values["google_ssh_port"] = banner.port
    values.update(extra)
    return values


def test_create_lifecycle_and_remove(api, creds, banner, tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\nruncmd: [touch /tmp/x]\n")
    d = make_driver(
        GoogleDriver,
        tmp_path,
        **flags(
            api,
            creds,
            banner,
            google_machine_type="e2-standard-2",
            google_tags="web,prod",
            google_userdata=str(ud),
            google_disk_size=30,
            google_source_cidr=("203.0.113.0/24",),
            google_open_port=("8080", "53/udp"),
        ),
    )
    d.pre_create_check()
    d.create()
    m = api.model

    [grant] = m.grants  # one token, cached for every later call
    assert grant["iss"] == EMAIL
    assert not [
        r
        for r in api.requests
        if r.path.startswith("/compute/") and r.headers.get("authorization") != f"Bearer {ACCESS_TOKEN}"
    ]

    [fw_req] = api.calls("POST", path=f"/compute/v1/projects/{PROJECT}/global/firewalls")
    fw = fw_req.json
    assert fw["name"] == "dockyard-machines" and fw["direction"] == "INGRESS"
    assert sorted((a["IPProtocol"], tuple(a["ports"])) for a in fw["allowed"]) == [
        ("tcp", (str(banner.port), "2376", "8080")),
        ("udp", ("53",)),
    ]
    assert fw["sourceRanges"] == ["203.0.113.0/24"] and fw["targetTags"] == ["dockyard-machines"]
    assert fw["network"].endswith(f"/projects/{PROJECT}/global/networks/default")

    [create] = api.calls("POST", path=f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances")
    body = create.json
    assert body["name"] == "m1" and body["machineType"].endswith(f"/zones/{ZONE}/machineTypes/e2-standard-2")
    assert body["tags"] == {"items": ["dockyard-machines", "web", "prod"]}
    assert body["labels"] == {"dockyard-machine": "m1"}
    meta = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert meta["ssh-keys"] == "docker-user:" + (tmp_path / "id_ed25519.pub").read_text().strip()
    assert meta["user-data"] == ud.read_text()
    [disk] = body["disks"]
    assert disk["boot"] and disk["autoDelete"] and disk["initializeParams"]["diskSizeGb"] == 30
    assert disk["initializeParams"]["sourceImage"].endswith(f"/projects/ubuntu-os-cloud/global/images/{FAMILY_IMAGE}")
    assert disk["initializeParams"]["diskType"].endswith(f"/zones/{ZONE}/diskTypes/pd-balanced")
    assert body["networkInterfaces"][0]["accessConfigs"] == [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]

    assert d.ip() == "127.0.0.1" and d.config["PrivateIPAddress"] == "10.132.0.7"
    assert d.state() == State.RUNNING
    d.stop()
    assert d.state() == State.STOPPED
    d.start()
    d.kill()
    d.start()
    d.restart()
    assert m.instances["m1"]["verbs"] == ["stop", "start", "stop", "start", "reset"]
    assert d.state() == State.RUNNING

    d.remove()
    assert m.instances == {} and m.disks == {} and m.firewalls == {}
    assert not [r for r in api.requests if r.method == "DELETE" and "/disks/" in r.path]  # autoDelete did it
    d.remove()


def test_shared_firewall_is_widened_and_kept_while_used(api, creds, banner, tmp_path):
    a = make_named_driver(GoogleDriver, "a", tmp_path, **flags(api, creds, banner))
    b = make_named_driver(
        GoogleDriver,
        "b",
        tmp_path,
        **flags(
            api,
            creds,
            banner,
            google_open_port=("9000",),
            google_source_cidr=("198.51.100.0/24",),
            google_machine_image="projects/debian-cloud/global/images/debian-12-bookworm-v20250113",
        ),
    )
    for d in (a, b):
        d.pre_create_check()
        d.create()
    assert len(api.calls("POST", path=f"/compute/v1/projects/{PROJECT}/global/firewalls")) == 1
    [update] = api.calls("PUT", path=f"/compute/v1/projects/{PROJECT}/global/firewalls/dockyard-machines")
    assert update.json["allowed"] == [{"IPProtocol": "tcp", "ports": sorted([str(banner.port), "2376", "9000"])}]
    assert update.json["sourceRanges"] == ["0.0.0.0/0", "198.51.100.0/24"]
    assert api.model.instances["b"]["disks"][0]["initializeParams"]["sourceImage"].endswith(
        "/projects/debian-cloud/global/images/debian-12-bookworm-v20250113"
    )
    a.remove()
    assert "dockyard-machines" in api.model.firewalls  # b still carries the tag
    b.remove()
    assert api.model.firewalls == {} and api.model.instances == {}


def test_refused_service_account_is_one_line(api, tmp_path, monkeypatch):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not the account's key
    path = service_account(tmp_path / "stale.json", other)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", path)
    d = make_driver(GoogleDriver, tmp_path, **flags(api, path))
    with pytest.raises(PreCreateCheckError, match="refused the credentials") as e:
        d.pre_create_check()
    assert e.value.exit_code == 3 and "\n" not in str(e.value) and "Invalid JWT Signature" in str(e.value)
    assert api.calls(prefix="/compute/") == []


def test_not_a_service_account_key(api, tmp_path, monkeypatch):
    path = tmp_path / "junk.json"
    path.write_text('{"installed": {}}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    d = make_driver(GoogleDriver, tmp_path, **flags(api, str(path)))
    with pytest.raises(PreCreateCheckError, match="not a service account JSON key"):
        d.pre_create_check()
    assert api.requests == []


@pytest.mark.parametrize(
    "extra, text",
    [
        ({"google_zone": "mars-north1-a"}, 'unknown zone "mars-north1-a"'),
        ({"google_machine_type": "e2-enormous"}, "machineTypes/e2-enormous' was not found"),
        (
            {"google_machine_image": "projects/ubuntu-os-cloud/global/images/family/plan9"},
            "family/plan9' was not found",
        ),
    ],
)
def test_unknown_zone_type_image_fail_the_pre_create_check(api, creds, tmp_path, extra, text):
    d = make_driver(GoogleDriver, tmp_path, **flags(api, creds, **extra))
    with pytest.raises(PreCreateCheckError, match=re.escape(text)) as e:
        d.pre_create_check()
    assert "\n" not in str(e.value) and "{'" not in str(e.value)  # Google's message, not libcloud's dict
    assert api.calls("POST", prefix="/compute/") == []


def test_tls_is_verified_against_the_trusted_ca_only(api, creds, tmp_path, monkeypatch):
    """The fake's certificate comes from the test CA; trusting another CA instead makes the sign-in fail:
    libcloud really verifies the TLS connection (and so never talks to anything unverified)."""
    (tmp_path / "other").mkdir()
    ThrowawayCA(tmp_path / "other").trust_in_libcloud(monkeypatch)
    d = make_driver(GoogleDriver, tmp_path, **flags(api, creds))
    with pytest.raises(PreCreateCheckError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed") as e:
        d.pre_create_check()
    assert "\n" not in str(e.value)
    assert api.model.grants == []


def test_cli_refused_service_account_exit_3_with_one_line(api, tmp_path, capsys, monkeypatch):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account(tmp_path / "stale.json", other))
    code, out, err = run_cli(
        capsys,
        tmp_path / "store",
        "create",
        "-d",
        "google",
        "--google-endpoint",
        api.url,
        "--google-project",
        PROJECT,
        "--google-zone",
        ZONE,
        "web1",
    )
    assert code == 3, (out, err)
    assert len(err.strip().splitlines()) == 1 and "refused the credentials" in err and "Traceback" not in err
