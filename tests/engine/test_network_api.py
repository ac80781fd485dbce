"""The networks API of a real engine process, through HTTP, the docker CLI and docker-py.

The engine runs in a network namespace of its own (`unshare --net`): creating a network
brings a bridge up, and that must never happen in this machine's namespace.
"""

import json
import os
import shutil
import subprocess
import sys
from urllib.parse import quote

import pytest

from tests.engine.engine_helper import EngineProcess, get_json, http_get

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for the engine's own netns"
)


@pytest.fixture(scope="module")
def engine(module_engine_starter):
    pytest.importorskip("pyroute2")
    d = module_engine_starter.dir
    d.mkdir(parents=True, exist_ok=True)
    sock = str(d / "net.sock")
    proc = EngineProcess(
        [
            "unshare",
            "--net",
            sys.executable,
            str(module_engine_starter.pyz),
            "--data-root",
            str(d / "data"),
            "--exec-root",
            str(d / "exec"),
            "--pidfile",
            str(d / "engine.pid"),
            "-H",
            "unix://" + sock,
            "--opt",
            "bip=172.29.0.1/16",
            "--opt",
            "bridge=dytestbr0",
        ]
    )
    proc.wait_ready()
    proc.sock = sock
    yield proc
    proc.kill()
    assert "dytestbr0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def _post(engine, path, body):
    status, _, data = http_get(
        path, unix=engine.sock, method="POST", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    return status, json.loads(data) if data.strip() else None


def _in_engine_netns(engine, *argv):
    return subprocess.run(
        ["nsenter", "--net=/proc/%d/ns/net" % engine.proc.pid] + list(argv), capture_output=True, text=True, timeout=60
    )


def _docker(engine, tmp_path, *args):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_CONFIG": str(tmp_path / ".docker"),
        "DOCKER_HOST": "unix://" + engine.sock,
    }
    return subprocess.run(["docker"] + list(args), env=env, capture_output=True, text=True, timeout=60)


def test_list_shapes(engine):
    nets = get_json("/v1.50/networks", unix=engine.sock)
    assert [n["Name"] for n in nets] == ["bridge", "host", "none"]
    assert [n["Driver"] for n in nets] == ["bridge", "host", "null"]
    bridge = nets[0]
    assert len(bridge["Id"]) == 64 and bridge["Scope"] == "local"
    assert bridge["IPAM"] == {
        "Driver": "default",
        "Options": None,
        "Config": [{"Subnet": "172.29.0.0/16", "Gateway": "172.29.0.1"}],
    }
    assert bridge["Options"]["com.docker.network.bridge.name"] == "dytestbr0"
    assert bridge["Options"]["com.docker.network.bridge.default_bridge"] == "true"
    for key in (
        "Created",
        "EnableIPv6",
        "Internal",
        "Attachable",
        "Ingress",
        "ConfigFrom",
        "ConfigOnly",
        "Containers",
        "Labels",
    ):
        assert key in bridge
    # unversioned path, and IDs are stable between calls
    assert [n["Id"] for n in get_json("/networks", unix=engine.sock)] == [n["Id"] for n in nets]


def test_filters(engine):
    def names(filters):
        return [n["Name"] for n in get_json("/v1.50/networks?filters=" + quote(json.dumps(filters)), unix=engine.sock)]

    assert names({"name": {"bri": True}}) == ["bridge"]
    assert names({"driver": ["null"]}) == ["none"]
    assert names({"type": {"custom": True}}) == []
    assert names({"type": {"builtin": True}}) == ["bridge", "host", "none"]
    assert names({"dangling": ["true"]}) == []
    nets = get_json("/v1.50/networks", unix=engine.sock)
    assert names({"id": [nets[1]["Id"][:10]]}) == ["host"]
    status, _, body = http_get("/v1.50/networks?filters=" + quote(json.dumps({"colour": ["red"]})), unix=engine.sock)
    assert status == 400 and json.loads(body)["message"] == "invalid filter 'colour'"


def test_inspect_by_name_id_and_prefix(engine):
    nets = get_json("/v1.50/networks", unix=engine.sock)
    for ref in ("bridge", nets[0]["Id"], nets[0]["Id"][:12]):
        assert get_json("/v1.50/networks/" + ref, unix=engine.sock)["Name"] == "bridge"
    status, headers, body = http_get("/v1.50/networks/nosuch", unix=engine.sock)
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": "network nosuch not found"}


def test_create_inspect_remove_user_defined_network(engine):
    status, body = _post(
        engine,
        "/v1.50/networks/create",
        {
            "Name": "appnet",
            "Driver": "bridge",
            "Labels": {"tier": "web"},
            "IPAM": {"Config": [{"Subnet": "10.77.0.0/24"}]},
        },
    )
    assert status == 201 and len(body["Id"]) == 64 and body["Warning"] == ""
    net = get_json("/v1.50/networks/appnet", unix=engine.sock)
    assert net["Id"] == body["Id"] and net["Driver"] == "bridge" and net["Labels"] == {"tier": "web"}
    assert net["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24"}]  # dockerd names no gateway it was not given
    device = "br-" + body["Id"][:12]
    assert "10.77.0.1/24" in _in_engine_netns(engine, "ip", "-o", "-4", "addr", "show", device).stdout
    assert [
        n["Name"] for n in get_json("/v1.50/networks?filters=" + quote('{"type":["custom"]}'), unix=engine.sock)
    ] == ["appnet"]
    # an automatic subnet skips the ones in use
    status, auto = _post(engine, "/v1.50/networks/create", {"Name": "autonet"})
    assert status == 201
    subnet = get_json("/v1.50/networks/" + auto["Id"][:12], unix=engine.sock)["IPAM"]["Config"][0]["Subnet"]
    assert subnet not in ("172.29.0.0/16", "10.77.0.0/24")
    # the NAT table carries one rule per bridged network
    if shutil.which("nft"):
        nft = _in_engine_netns(engine, "nft", "list", "table", "ip", "dockyard").stdout
        assert 'ip saddr 10.77.0.0/24 oifname != "%s" masquerade' % device in nft
    # refusals
    assert _post(engine, "/v1.50/networks/create", {"Name": "appnet"})[0] == 409
    status, body = _post(
        engine, "/v1.50/networks/create", {"Name": "clash", "IPAM": {"Config": [{"Subnet": "10.77.0.128/25"}]}}
    )
    assert status == 409 and "overlaps" in body["message"]
    assert _post(engine, "/v1.50/networks/create", {"Name": "x", "Driver": "overlay"})[0] == 400
    assert _post(engine, "/v1.50/networks/create", {"Name": "bridge"})[0] == 409
    status, _, body = http_get("/v1.50/networks/bridge", unix=engine.sock, method="DELETE")
    assert status == 403
    assert json.loads(body)["message"] == "bridge is a pre-defined network and cannot be removed"
    # remove one, prune the other
    status, _, _ = http_get("/v1.50/networks/appnet", unix=engine.sock, method="DELETE")
    assert status == 204
    assert device not in _in_engine_netns(engine, "ip", "-o", "link").stdout
    assert _post(engine, "/v1.50/networks/prune", {})[1] == {"NetworksDeleted": ["autonet"]}
    assert [n["Name"] for n in get_json("/v1.50/networks", unix=engine.sock)] == ["bridge", "host", "none"]
    status, _, _ = http_get("/v1.50/networks/appnet", unix=engine.sock, method="DELETE")
    assert status == 404


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_docker_cli_network_ls_and_inspect(engine, tmp_path):
    out = _docker(engine, tmp_path, "network", "ls")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [r[1:] for r in rows[1:]] == [
        ["bridge", "bridge", "local"],
        ["host", "host", "local"],
        ["none", "null", "local"],
    ]
    out = _docker(
        engine,
        tmp_path,
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
    )
    assert out.returncode == 0 and out.stdout.strip() == "172.29.0.0/16 172.29.0.1", out.stderr
    # `docker inspect NAME` falls through containers and images to the network
    out = _docker(engine, tmp_path, "inspect", "--type", "network", "host")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["Driver"] == "host", out.stderr
    out = _docker(engine, tmp_path, "network", "rm", "none")
    assert out.returncode != 0 and "none is a pre-defined network and cannot be removed" in out.stderr
    out = _docker(engine, tmp_path, "network", "create", "--subnet", "10.78.0.0/24", "--label", "a=b", "clinet")
    assert out.returncode == 0 and len(out.stdout.strip()) == 64, out.stderr
    out = _docker(engine, tmp_path, "network", "ls", "--filter", "label=a=b", "--format", "{{.Name}}")
    assert out.stdout.split() == ["clinet"]
    out = _docker(engine, tmp_path, "network", "rm", "clinet")
    assert out.returncode == 0 and out.stdout.strip() == "clinet", out.stderr


def test_docker_py_networks(engine):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url="unix://" + engine.sock)
    try:
        assert sorted(n.name for n in client.networks.list()) == ["bridge", "host", "none"]
        net = client.networks.get("bridge")
        assert net.attrs["IPAM"]["Config"][0]["Subnet"] == "172.29.0.0/16"
        assert net.containers == []
        with pytest.raises(docker.errors.NotFound):
            client.networks.get("nosuch")
        made = client.networks.create("pynet", driver="bridge", labels={"by": "docker-py"})
        assert client.networks.get(made.id).attrs["Labels"] == {"by": "docker-py"}
        assert "pynet" in [n.name for n in client.networks.list(names=["pynet"])]
        made.remove()
        assert [n.name for n in client.networks.list(names=["pynet"])] == []
    finally:
        client.close()
