"""The exoscale driver. Exoscale retired the CloudStack API that libcloud's Exoscale driver speaks, so against
Exoscale the pre-create check must say so before any request (and before credentials are stored). With an
endpoint naming another CloudStack-compatible API the driver still works: a handwritten CloudStack API on
127.0.0.1 (it checks the HMAC-SHA1 request signature) records the key pair, security group rules, the
deployVirtualMachine parameters and the lifecycle calls."""

import base64
import hashlib
import hmac
import json
import re
import urllib.parse
import uuid

import pytest

from tests.drivers.cloud_fakes import FakeAPI, SSHBanner, loopback_only, make_driver, run_cli

pytest.importorskip("libcloud")

from dockyard.drivers.base import State  # noqa: E402
from dockyard.drivers.cloud.exoscale import ExoscaleDriver  # noqa: E402
from dockyard.provisioner.core.errors import PreCreateCheckError  # noqa: E402

KEY, SECRET = "EXOtestkey0123456789", "test-secret-abcdefghijklmnop"
ZONE_ID = "1128bd56-b4d9-4ac6-a7b9-c715b187ce11"
ASYNC = {
    "deployvirtualmachine",
    "startvirtualmachine",
    "stopvirtualmachine",
    "rebootvirtualmachine",
    "destroyvirtualmachine",
    "authorizesecuritygroupingress",
}


def signature(params, secret):
    pairs = sorted((k.lower(), v) for k, v in params.items() if k != "signature")
    text = "&".join(f"{urllib.parse.quote(k, safe='[]')}={urllib.parse.quote(str(v), safe='[]*')}" for k, v in pairs)
    digest = hmac.new(secret.encode(), text.lower().replace("+", "%20").encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class CloudStackModel:
    def __init__(self, deprecated=False):
        self.deprecated = deprecated
        self.keys, self.groups, self.vms, self.jobs = {}, {}, {}, {}
        self.commands = []

    def vm_view(self, vm):
        return {
            "id": vm["id"],
            "name": vm["name"],
            "displayname": vm["name"],
            "state": vm["state"],
            "zoneid": vm["zoneid"],
            "templateid": vm["templateid"],
            "serviceofferingid": vm["serviceofferingid"],
            "keypair": vm.get("keypair"),
            "securitygroup": [{"name": n} for n in vm["groups"]],
            "nic": [{"id": "nic-1", "ipaddress": "127.0.0.1", "isdefault": True}],
            "created": "2025-01-15T12:00:00+0100",
        }

    def job(self, result):
        jid = str(uuid.uuid4())
        self.jobs[jid] = result
        return {"jobid": jid}

    def command(self, cmd, q):
        if cmd == "listzones":
            return {"count": 2, "zone": [{"id": ZONE_ID, "name": "ch-gva-2"}, {"id": "z2", "name": "de-fra-1"}]}
        if cmd == "listserviceofferings":
            return {
                "serviceoffering": [
                    {"id": f"so-{n}", "name": n, "cpunumber": c, "memory": m}
                    for n, c, m in (("Small", 1, 2048), ("Medium", 2, 4096))
                ]
            }
        if cmd == "listtemplates":
            assert q.get("zoneid") == ZONE_ID and q["templatefilter"] == "executable"
            return {
                "template": [
                    {
                        "id": f"tpl-{i}",
                        "name": n,
                        "hypervisor": "KVM",
                        "format": "QCOW2",
                        "ostypename": "Other (64-bit)",
                        "displaytext": n,
                        "size": 10 << 30,
                    }
                    for i, n in enumerate(("Linux Ubuntu 24.04 LTS 64-bit", "Linux Debian 12 64-bit"))
                ]
            }
        if cmd == "listsshkeypairs":
            return {"sshkeypair": list(self.keys.values())} if self.keys else {}
        if cmd == "registersshkeypair":
            k = {"name": q["name"], "fingerprint": "aa:bb", "publickey": q["publickey"]}
            self.keys[k["name"]] = k
            return {"keypair": k}
        if cmd == "deletesshkeypair":
            return {"success": "true" if self.keys.pop(q["name"], None) else "false"}
        if cmd == "listsecuritygroups":
            return {"securitygroup": list(self.groups.values())} if self.groups else {}
        if cmd == "createsecuritygroup":
            g = {"id": str(uuid.uuid4()), "name": q["name"], "description": q.get("description", ""), "ingressrule": []}
            self.groups[g["name"]] = g
            return {"securitygroup": g}
        if cmd == "authorizesecuritygroupingress":
            g = self.groups[q["securitygroupname"]]
            g["ingressrule"].append(
                {
                    "ruleid": str(uuid.uuid4()),
                    "protocol": q["protocol"].lower(),
                    "startport": int(q["startport"]),
                    "endport": int(q["endport"]),
                    "cidr": q["cidrlist"],
                }
            )
            return self.job({"securitygroup": g})
        if cmd == "deletesecuritygroup":
            if any(q["name"] in vm["groups"] for vm in self.vms.values()):
                return 431, {"errorcode": 431, "errortext": "Cannot delete group when it's in use by virtual machines"}
            del self.groups[q["name"]]
            return {"success": "true"}
        if cmd == "deployvirtualmachine":
            vm = {
                "id": str(uuid.uuid4()),
                "name": q["name"],
                "state": "Running",
                "zoneid": q["zoneid"],
                "templateid": q["templateid"],
                "serviceofferingid": q["serviceofferingid"],
                "keypair": q.get("keypair"),
                "groups": q.get("securitygroupnames", "").split(","),
                "params": q,
            }
            self.vms[vm["id"]] = vm
            return self.job({"virtualmachine": self.vm_view(vm)})
        if cmd == "listvirtualmachines":
            return {"virtualmachine": [self.vm_view(v) for v in self.vms.values()]} if self.vms else {}
        if cmd in ("listpublicipaddresses", "listportforwardingrules", "listipforwardingrules"):
            return {}
        if cmd in ("startvirtualmachine", "stopvirtualmachine", "rebootvirtualmachine"):
            vm = self.vms[q["id"]]
            vm["state"] = "Stopped" if cmd == "stopvirtualmachine" else "Running"
            return self.job({"virtualmachine": self.vm_view(vm)})
        if cmd == "destroyvirtualmachine":
            assert q.get("expunge") == "True"
            vm = self.vms.pop(q["id"])
            return self.job({"virtualmachine": dict(self.vm_view(vm), state="Destroyed")})
        if cmd == "queryasyncjobresult":
            return {"jobid": q["jobid"], "jobstatus": 1, "jobresult": self.jobs.pop(q["jobid"])}
        return 432, {"errorcode": 432, "errortext": f"The given command does not exist: {cmd}"}

    def handle(self, r):
        q = r.query
        cmd = q.get("command", "").lower()
        self.commands.append((cmd, q))
        if self.deprecated:
            return (
                403,
                {
                    f"{cmd}response": {
                        "errorcode": 403,
                        "cserrorcode": 9999,
                        "errortext": "This API is deprecated. See https://changelog.exoscale.com/en#feature54957866 for "
                        "more informations.",
                    }
                },
                {},
            )
        if r.path != "/compute" or q.get("apiKey") != KEY or q.get("signature") != signature(q, SECRET):
            return (
                401,
                {
                    f"{cmd}response": {
                        "errorcode": 401,
                        "errortext": "unable to verify user credentials and/or request signature",
                    }
                },
                {},
            )
        out = self.command(cmd, q)
        if isinstance(out, tuple):
            return out[0], {f"{cmd}response": out[1]}, {}
        return 200, {f"{cmd}response": out}, {}


@pytest.fixture(autouse=True)
def _guard_and_creds(monkeypatch):
    loopback_only(monkeypatch)
    monkeypatch.setenv("EXOSCALE_API_KEY", KEY)
    monkeypatch.setenv("EXOSCALE_API_SECRET", SECRET)


@pytest.fixture
def banner():
    b = SSHBanner()
    yield b
    b.close()


@pytest.mark.parametrize("endpoint", [None, "https://api.exoscale.com/compute", "https://api.exoscale.ch/v1"])
def test_exoscale_itself_is_refused_before_any_request(tmp_path, monkeypatch, endpoint):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the pre-create check must not touch the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("DOCKYARD_CREDENTIALS_FILE", str(tmp_path / "creds.json"))
    d = make_driver(
        ExoscaleDriver,
        tmp_path,
        exoscale_api_key="given-on-the-command-line",
        exoscale_api_secret_key="x",
        exoscale_endpoint=endpoint,
    )
    with pytest.raises(PreCreateCheckError, match="Exoscale retired the CloudStack-compatible API") as e:
        d.pre_create_check()
    assert e.value.exit_code == 3 and "\n" not in str(e.value) and "-d generic" in str(e.value)
    assert not (tmp_path / "creds.json").exists()  # nothing stored for a driver that cannot work


def test_deprecated_answer_from_an_exoscale_proxy_is_explained(tmp_path):
    api = FakeAPI(CloudStackModel(deprecated=True))
    try:
        d = make_driver(
            ExoscaleDriver,
            tmp_path,
            exoscale_api_key=KEY,
            exoscale_api_secret_key=SECRET,
            exoscale_endpoint=api.url + "/compute",
        )
        with pytest.raises(PreCreateCheckError, match="Exoscale retired the CloudStack-compatible API"):
            d.pre_create_check()
    finally:
        api.close()


def test_cloudstack_endpoint_create_lifecycle_and_remove(tmp_path, banner):
    model = CloudStackModel()
    api = FakeAPI(model)
    try:
        ud = tmp_path / "ud"
        ud.write_text("#cloud-config\n")
        d = make_driver(
            ExoscaleDriver,
            tmp_path,
            exoscale_api_key=KEY,
            exoscale_api_secret_key=SECRET,
            exoscale_endpoint=api.url + "/compute",
            exoscale_ssh_port=banner.port,
            exoscale_instance_profile="Medium",
            exoscale_image="Linux Debian 12 64-bit",
            exoscale_disk_size=50,
            exoscale_userdata=str(ud),
            exoscale_source_cidr=("192.0.2.0/24",),
        )
        d.pre_create_check()
        d.create()
        by_cmd = {}
        for cmd, q in model.commands:
            by_cmd.setdefault(cmd, []).append(q)
        [key] = by_cmd["registersshkeypair"]
        assert key["publickey"] == (tmp_path / "id_ed25519.pub").read_text().strip()
        [group] = by_cmd["createsecuritygroup"]
        assert group["name"] == "dockyard"
        assert [
            (q["protocol"], q["startport"], q["endport"], q["cidrlist"])
            for q in by_cmd["authorizesecuritygroupingress"]
        ] == [("TCP", str(banner.port), str(banner.port), "192.0.2.0/24"), ("TCP", "2376", "2376", "192.0.2.0/24")]
        [deploy] = by_cmd["deployvirtualmachine"]
        assert (deploy["name"], deploy["zoneid"], deploy["serviceofferingid"], deploy["templateid"]) == (
            "m1",
            ZONE_ID,
            "so-Medium",
            "tpl-1",
        )
        assert deploy["rootdisksize"] == "50" and deploy["securitygroupnames"] == "dockyard"
        assert deploy["keypair"] == key["name"] and deploy["startvm"] == "True"
        assert base64.b64decode(deploy["userdata"]).decode() == ud.read_text()
        assert d.ip() == "127.0.0.1" and d.state() == State.RUNNING
        d.stop()
        assert d.state() == State.STOPPED
        d.start()
        d.restart()
        assert [c for c, _ in model.commands if c.endswith("virtualmachine") and c != "deployvirtualmachine"] == [
            "stopvirtualmachine",
            "startvirtualmachine",
            "rebootvirtualmachine",
        ]
        d.remove()
        assert model.vms == {} and model.keys == {} and model.groups == {}
        assert SECRET not in json.dumps(d.to_config())
    finally:
        api.close()


def test_cloudstack_bad_secret_and_unknown_names(tmp_path, monkeypatch):
    api = FakeAPI(CloudStackModel())
    try:
        monkeypatch.setenv("EXOSCALE_API_SECRET", "wrong")
        d = make_driver(
            ExoscaleDriver,
            tmp_path,
            exoscale_api_key=KEY,
            exoscale_api_secret_key="wrong",
            exoscale_endpoint=api.url + "/compute",
        )
        with pytest.raises(PreCreateCheckError, match="refused the credentials") as e:
            d.pre_create_check()
        assert "\n" not in str(e.value)
        monkeypatch.setenv("EXOSCALE_API_SECRET", SECRET)
        for flags, text in (
            ({"exoscale_availability_zone": "mars-1"}, 'zone "mars-1" not found'),
            ({"exoscale_instance_profile": "Huge"}, 'instance type "Huge" not found'),
            ({"exoscale_image": "Plan 9"}, 'template "Plan 9" not found'),
        ):
            d = make_driver(
                ExoscaleDriver,
                tmp_path,
                exoscale_api_key=KEY,
                exoscale_api_secret_key=SECRET,
                exoscale_endpoint=api.url + "/compute",
                **flags,
            )
            with pytest.raises(PreCreateCheckError, match=re.escape(text)):
                d.pre_create_check()
        assert not [c for c, _ in api.model.commands if c in ("deployvirtualmachine", "registersshkeypair")]
    finally:
        api.close()


def test_cli_exoscale_exit_3_with_one_line(tmp_path, capsys):
    code, out, err = run_cli(capsys, tmp_path / "store", "create", "-d", "exoscale", "web1")
    assert code == 3, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Exoscale retired" in err and "Traceback" not in err
    assert not (tmp_path / "store" / "machines" / "web1").exists()
