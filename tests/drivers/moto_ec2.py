"""Test helper: moto's EC2 server with IAM-checked credentials, and queries against it.

Run inside the test's network namespace (only loopback):
    python3 -m tests.drivers.moto_ec2 serve --port 0 --ready FILE   # writes {"port", "access_key", "secret_key"}
    python3 -m tests.drivers.moto_ec2 describe --port P --key K --secret S --region R
The WSGI wrapper makes moto's EC2 answers look like AWS's (the namespace URI with its trailing slash, which
libcloud matches exactly; the error format), and moto's SigV4 check is made to accept what AWS accepts.
These are test-side fixes: the product code talks plain EC2.
"""

import argparse
import json
import os
import re
import sys
import urllib.parse

ACCOUNT = "123456789012"
MOTO_NS = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
AWS_NS = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'
TEST_UBUNTU = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-{date}"


class FixNamespace:
    """WSGI middleware: EC2 responses as AWS writes them (namespace URI with its trailing slash; errors
    without a namespace, of Code and Message)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None  # moto never uses the write() callable

        body = b"".join(self.app(environ, capture))
        if MOTO_NS in body:
            body = body.replace(MOTO_NS, AWS_NS)
        if not captured["status"].startswith("2"):
            # AWS's EC2 errors carry no namespace and only Code and Message; moto adds both.
            body = re.sub(rb"<Type>[^<]*</Type>", b"", body.replace(b" " + AWS_NS, b""))
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        return [body]


def write_amis(path):
    """A small AMI catalogue: two Canonical Ubuntu 24.04 builds (the newer is the default) and a Debian 12.
    No creation_date: moto re-parses this list for every region and chokes on already-parsed dates."""
    amis = [
        {
            "ami_id": "ami-0a0b0c0d0e0f00001",
            "name": TEST_UBUNTU.format(date="20240423"),
            "description": "Canonical, Ubuntu, 24.04 LTS",
            "owner_id": "099720109477",
            "public": True,
            "virtualization_type": "hvm",
            "architecture": "x86_64",
            "state": "available",
            "platform": None,
            "root_device_type": "ebs",
            "root_device_name": "/dev/sda1",
            "sriov": "simple",
            "hypervisor": "xen",
        },
        {
            "ami_id": "ami-0a0b0c0d0e0f00002",
            "name": TEST_UBUNTU.format(date="20250115"),
            "description": "Canonical, Ubuntu, 24.04 LTS",
            "owner_id": "099720109477",
            "public": True,
            "virtualization_type": "hvm",
            "architecture": "x86_64",
            "state": "available",
            "platform": None,
            "root_device_type": "ebs",
            "root_device_name": "/dev/sda1",
            "sriov": "simple",
            "hypervisor": "xen",
        },
        {
            "ami_id": "ami-0d0e0b0i0a0n00012",
            "name": "debian-12-amd64-20250101-1980",
            "description": "Debian 12",
            "owner_id": "136693071363",
            "public": True,
            "virtualization_type": "hvm",
            "architecture": "x86_64",
            "state": "available",
            "platform": None,
            "root_device_type": "ebs",
            "root_device_name": "/dev/xvda",
            "sriov": "simple",
            "hypervisor": "xen",
        },
    ]
    with open(path, "w") as f:
        json.dump(amis, f)


def make_user():
    """An IAM user allowed ec2:*, created in-process before auth is switched on."""
    from moto.iam.models import iam_backends

    iam = iam_backends[ACCOUNT]["aws"]
    iam.create_user("us-east-1", "dockyard-test", "/", None)
    iam.put_user_policy(
        "dockyard-test",
        "ec2",
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}),
    )
    key = iam.create_access_key("dockyard-test")
    return key.access_key_id, key.secret_access_key


def _check_signatures_like_aws():
    """Fixes to moto's SigV4 check, so correctly signed requests pass as they do at AWS: a signed GET has
    an empty body (moto hashes its query as a form body) and its query is compared in canonical form
    (moto takes it raw, as the client sent it), and every header the client lists in SignedHeaders counts
    (moto drops User-Agent, which libcloud signs)."""
    from botocore.auth import SigV4Auth
    from moto.iam import access_control

    class AllListedHeaders(SigV4Auth):
        def headers_to_sign(self, request):  # moto already kept only the headers the client listed
            header_map = super().headers_to_sign(request)
            for name, value in request.headers.items():
                if name.lower() not in header_map:
                    header_map[name.lower()] = value
            return header_map

    def quote(text):
        return urllib.parse.quote(text, safe="-_.~")

    original = access_control.IAMRequestBase._create_aws_request

    def create_aws_request(self):
        if self._method != "GET":
            return original(self)
        saved = self._data, self._body, self._path
        path, _, query = self._path.partition("?")
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        self._data, self._body = {}, b""
        self._path = path + "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
        try:
            return original(self)
        finally:
            self._data, self._body, self._path = saved

    access_control.IAMRequestBase._create_aws_request = create_aws_request
    access_control.IAMRequest._create_auth = lambda self, creds: AllListedHeaders(creds, self._service, self._region)


def serve(port, ready):
    amis = ready + ".amis.json"
    write_amis(amis)
    os.environ["MOTO_AMIS_PATH"] = amis
    from moto import settings
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    access_key, secret_key = make_user()
    _check_signatures_like_aws()
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is signed and checked by IAM
    server = make_server(
        "127.0.0.1", port, FixNamespace(DomainDispatcherApplication(create_backend_app)), threaded=True
    )
    info = {"port": server.server_address[1], "access_key": access_key, "secret_key": secret_key}
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, ready)
    server.serve_forever()


def describe(port, key, secret, region):
    """Everything the tests look at, as JSON: instances (with user data), key pairs, security groups."""
    import base64

    import boto3

    ec2 = boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    instances = []
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            ud = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
            raw = ud.get("UserData", {}).get("Value")
            instances.append(
                {
                    "id": i["InstanceId"],
                    "state": i["State"]["Name"],
                    "type": i["InstanceType"],
                    "image": i["ImageId"],
                    "key": i.get("KeyName"),
                    "subnet": i.get("SubnetId"),
                    "groups": sorted(
                        {g["GroupId"] for g in i.get("SecurityGroups", [])}
                        | {g["GroupId"] for n in i.get("NetworkInterfaces", []) for g in n.get("Groups", [])}
                    ),
                    "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])},
                    "user_data": base64.b64decode(raw).decode() if raw else None,
                    "public_ip": i.get("PublicIpAddress"),
                    "block_devices": [b["DeviceName"] for b in i.get("BlockDeviceMappings", [])],
                }
            )
    keys = [
        {"name": k["KeyName"], "fingerprint": k.get("KeyFingerprint")} for k in ec2.describe_key_pairs()["KeyPairs"]
    ]
    groups = []
    for g in ec2.describe_security_groups()["SecurityGroups"]:
        rules = sorted(
            {
                (p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort"), r["CidrIp"])
                for p in g.get("IpPermissions", [])
                for r in p.get("IpRanges", [])
            }
        )
        groups.append(
            {
                "id": g["GroupId"],
                "name": g["GroupName"],
                "vpc": g.get("VpcId"),
                "description": g.get("Description"),
                "ingress": [list(r) for r in rules],
            }
        )
    volumes = [
        {"id": v["VolumeId"], "size": v["Size"], "type": v.get("VolumeType")} for v in ec2.describe_volumes()["Volumes"]
    ]
    json.dump({"instances": instances, "key_pairs": keys, "security_groups": groups, "volumes": volumes}, sys.stdout)


def main(argv=None):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--ready", required=True)
    d = sub.add_parser("describe")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--key", required=True)
    d.add_argument("--secret", required=True)
    d.add_argument("--region", default="eu-west-1")
    a = p.parse_args(argv)
    if a.cmd == "serve":
        serve(a.port, a.ready)
    else:
        describe(a.port, a.key, a.secret, a.region)


if __name__ == "__main__":
    main()
