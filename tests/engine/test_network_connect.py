"""`docker network connect/disconnect` (with --alias, --ip), several networks per container and
--network-alias, with the real docker CLI and docker-py against an engine in its own network namespace
(tests/engine/runtime_helper.py: the bridges, addresses and forwarding exist only there)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from dockyard.engine.errors import InvalidParameter
from dockyard.engine.network.attachments import endpoint_request, requests_from_create
from tests.engine.runtime_helper import RuntimeEngine

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("docker"), reason="needs root and the docker CLI")
pytest.importorskip("pyroute2")


@pytest.fixture(scope="module")
def eng():
    e = RuntimeEngine()
    try:
        e.start()
        e.load_busybox()
        e.docker("network", "create", "--subnet", "10.71.0.0/24", "neta")
        e.docker("network", "create", "--subnet", "10.72.0.0/24", "netb")
        yield e
    finally:
        e.cleanup()


def addresses(eng, name):
    """{ifname: address} inside the container."""
    out = eng.docker("exec", name, "ip", "-4", "-o", "addr").stdout
    return {line.split()[1]: line.split()[3].split("/")[0] for line in out.splitlines() if "inet" in line}


def networks(eng, name):
    return json.loads(eng.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", name).stdout)


def ping(eng, src, address):
    return eng.docker("exec", src, "ping", "-c", "1", "-W", "2", address, check=False).returncode == 0


def test_connect_and_disconnect_a_running_container(eng):
    d = eng.docker
    d("run", "-d", "--name", "ra", "--network", "neta", "--network-alias", "alpha", "busybox", "sleep", "300")
    d("run", "-d", "--name", "rb", "--network", "netb", "busybox", "sleep", "300")
    try:
        a_ip = addresses(eng, "ra")["eth0"]
        assert a_ip.startswith("10.71.0.")
        assert networks(eng, "ra")["neta"]["Aliases"] == ["alpha"]
        assert not ping(eng, "rb", a_ip)  # different networks: isolated
        d("network", "connect", "--alias", "bee", "--ip", "10.71.0.50", "neta", "rb")
        addrs = addresses(eng, "rb")
        assert addrs["eth0"].startswith("10.72.0.") and addrs["eth1"] == "10.71.0.50"
        assert ping(eng, "rb", a_ip) and ping(eng, "ra", "10.71.0.50")  # on both networks now
        nets = networks(eng, "rb")
        assert set(nets) == {"neta", "netb"}
        assert nets["neta"]["IPAddress"] == "10.71.0.50" and nets["neta"]["Aliases"] == ["bee"]
        assert nets["neta"]["IPAMConfig"] == {"IPv4Address": "10.71.0.50"}
        members = json.loads(d("network", "inspect", "-f", "{{json .Containers}}", "neta").stdout)
        assert {m["Name"] for m in members.values()} == {"ra", "rb"}
        # as dockerd 20.10: the default route goes through the network first by name (neta < netb)
        assert "dev eth1" in d("exec", "rb", "ip", "route", "show", "default").stdout
        p = d("network", "connect", "neta", "rb", check=False)
        assert p.returncode != 0 and "already exists in network neta" in p.stderr
        p = d("network", "connect", "--ip", "10.71.0.50", "neta", "ra", check=False)
        assert p.returncode != 0
        d("network", "disconnect", "neta", "rb")
        assert set(addresses(eng, "rb")) == {"lo", "eth0"}
        assert not ping(eng, "ra", "10.71.0.50")
        assert set(networks(eng, "rb")) == {"netb"}
        p = d("network", "disconnect", "neta", "rb", check=False)
        assert p.returncode != 0 and "is not connected to network neta" in p.stderr
        # the address was given back: connecting again with it works
        d("network", "connect", "--ip", "10.71.0.50", "neta", "rb")
        assert addresses(eng, "rb")["eth1"] == "10.71.0.50"
        # a restart keeps both networks
        d("restart", "-t", "0", "rb")
        assert set(addresses(eng, "rb")) == {"lo", "eth0", "eth1"}
        assert addresses(eng, "rb")["eth1"] == "10.71.0.50"
    finally:
        d("rm", "-f", "ra", "rb", check=False)
    # every address and veth went with the containers: the networks can go
    d("network", "create", "netc")
    d("network", "rm", "netc")


def test_connect_a_stopped_container_and_several_networks(eng):
    d = eng.docker
    # several networks at create (API >= 1.44): docker run --network a --network name=b,alias=x
    script = "ip -4 -o addr; nslookup bee 127.0.0.11"
    out = d(
        "run",
        "--rm",
        "--name",
        "multi",
        "--network",
        "neta",
        "--network",
        "name=netb,alias=bee",
        "busybox",
        "sh",
        "-c",
        script,
    ).stdout
    assert "eth0    inet 10.71.0." in out and "eth1    inet 10.72.0." in out
    assert "Address: 10.72.0." in out.split("Name:")[-1]
    d("create", "--name", "sa", "--network", "neta", "busybox", "sleep", "300")
    try:
        d("network", "connect", "--alias", "web", "netb", "sa")
        nets = networks(eng, "sa")
        assert set(nets) == {"neta", "netb"} and nets["netb"]["Aliases"] == ["web"]
        assert nets["netb"]["IPAddress"] == ""
        d("start", "sa")
        addrs = addresses(eng, "sa")
        assert addrs["eth0"].startswith("10.71.0.") and addrs["eth1"].startswith("10.72.0.")
        d("stop", "-t", "0", "sa")
        d("network", "disconnect", "netb", "sa")
        d("start", "sa")
        assert set(addresses(eng, "sa")) == {"lo", "eth0"}
        p = d("network", "connect", "host", "sa", check=False)
        assert p.returncode != 0 and "host network" in p.stderr
        p = d("network", "connect", "--ip", "172.17.0.9", "bridge", "sa", check=False)
        assert p.returncode != 0 and "user defined networks only" in p.stderr
        p = d("network", "connect", "nosuchnet", "sa", check=False)
        assert p.returncode != 0 and "not found" in p.stderr
        p = d("network", "connect", "neta", "nosuchcontainer", check=False)
        assert p.returncode != 0 and "No such container" in p.stderr
    finally:
        d("rm", "-f", "sa", check=False)


def test_docker_py_networks_at_create_and_connect(eng):
    client = eng.client()
    neta = client.networks.get("neta")
    c = client.containers.create("busybox", ["sleep", "300"], name="pyc", network="netb")
    try:
        neta.connect(c, aliases=["pyalias"], ipv4_address="10.71.0.77")
        c.start()
        c.reload()
        assert c.attrs["NetworkSettings"]["Networks"]["neta"]["IPAddress"] == "10.71.0.77"
        assert "pyalias" in c.attrs["NetworkSettings"]["Networks"]["neta"]["Aliases"]
        neta.reload()
        assert c.id in {x.id for x in neta.containers}
        neta.disconnect(c)
        c.reload()
        assert set(c.attrs["NetworkSettings"]["Networks"]) == {"netb"}
        r = c.exec_run(["ip", "-4", "-o", "addr"])
        assert b"10.71.0." not in r.output
    finally:
        c.remove(force=True)
    # --network-alias on the default bridge is refused as dockerd refuses it (the CLI checks first too)
    api = client.api
    import docker

    with pytest.raises(docker.errors.APIError) as info:
        api.create_container(
            "busybox",
            "true",
            host_config=api.create_host_config(network_mode="bridge"),
            networking_config=api.create_networking_config({"bridge": api.create_endpoint_config(aliases=["x"])}),
        )
    assert info.value.response.status_code == 400 and "user defined networks" in str(info.value)
    p = eng.docker("run", "--rm", "--network-alias", "x", "busybox", "true", check=False)
    assert p.returncode != 0 and "user-defined networks" in p.stderr


def test_endpoint_requests():
    assert endpoint_request("neta", {"Aliases": ["a", "a", "b"], "IPAMConfig": {"IPv4Address": "10.0.0.5"}}) == {
        "Aliases": ["a", "b"],
        "IPv4Address": "10.0.0.5",
    }
    for bad in ({"IPAMConfig": {"IPv4Address": "10.0.0.300"}}, {"Aliases": ["a b"]}):
        with pytest.raises(InvalidParameter):
            endpoint_request("neta", bad)
    with pytest.raises(InvalidParameter):
        endpoint_request("bridge", {"Aliases": ["x"]})
    resolve = {"neta": "neta", "netb": "netb"}.__getitem__
    assert list(requests_from_create("neta", {"EndpointsConfig": {"netb": {}, "neta": {}}}, resolve)) == [
        "neta",
        "netb",
    ]
    assert requests_from_create("bridge", {"EndpointsConfig": {"default": {}}}, resolve) == {"bridge": {}}
    with pytest.raises(InvalidParameter):
        requests_from_create("host", {"EndpointsConfig": {"netb": {}}}, resolve)


def test_network_container_mode_joins_another_containers_netns(eng):
    d = eng.docker
    d("run", "-d", "--name", "owner", "--network", "neta", "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc")
    try:
        owner_ip = addresses(eng, "owner")["eth0"]
        owner_host = d("exec", "owner", "hostname").stdout
        script = "ip -4 -o addr; hostname; wget -q -O- http://127.0.0.1:8080/hostname"
        out = d("run", "--rm", "--network", "container:owner", "busybox", "sh", "-c", script).stdout
        assert owner_ip in out and out.count(owner_host) == 2  # same address, hostname, and its localhost
        d("run", "-d", "--name", "side", "--network", "container:owner", "busybox", "sleep", "300")
        assert addresses(eng, "side") == addresses(eng, "owner")
        assert networks(eng, "side") == {}
        assert d("inspect", "-f", "{{.HostConfig.NetworkMode}}", "side").stdout.strip() == "container:owner"
        # the owner's names work from the joined container too (its resolver lives in that netns)
        assert "127.0.0.11" in d("exec", "side", "cat", "/etc/resolv.conf").stdout
        for args, text in (
            (("--network", "container:nosuch"), "No such container: nosuch"),
            (("--network", "container:owner", "-p", "80:80"), "port publishing and the container type network"),
            (("--network", "container:owner", "--hostname", "x"), "hostname and the network mode"),
            (("--network", "container:owner", "--dns", "1.1.1.1"), "dns and the network mode"),
        ):
            p = d("run", "--rm", *args, "busybox", "true", check=False)
            assert p.returncode == 125 and text in p.stderr, p.stderr
        d("create", "--name", "idle", "busybox", "true")
        p = d("run", "--rm", "--network", "container:idle", "busybox", "true", check=False)
        assert p.returncode == 125 and "cannot join network of a non running container" in p.stderr
        d("stop", "-t", "0", "owner")
        p = d("start", "side", check=False)  # running still (the netns lives on with it), or refused
        d("stop", "-t", "0", "side")
        p = d("start", "side", check=False)
        assert p.returncode != 0 and "cannot join network of a non running container" in p.stderr
        assert "side" not in d("ps", "--format", "{{.Names}}").stdout
    finally:
        d("rm", "-f", "owner", "side", "idle", check=False)
    assert d("ps", "-aq").stdout.strip() == ""


def test_mac_address(eng):
    d = eng.docker
    for network in ("neta", "bridge"):
        out = d(
            "run",
            "--rm",
            "--network",
            network,
            "--mac-address",
            "02:42:AC:11:00:99",
            "busybox",
            "cat",
            "/sys/class/net/eth0/address",
        ).stdout
        assert out.strip() == "02:42:ac:11:00:99"
    d(
        "run",
        "-d",
        "--name",
        "macc",
        "--network",
        "neta",
        "--mac-address",
        "0a:00:00:00:00:01",
        "busybox",
        "sleep",
        "300",
    )
    try:
        assert networks(eng, "macc")["neta"]["MacAddress"] == "0a:00:00:00:00:01"
    finally:
        d("rm", "-f", "macc")
    for mac, text in (("01:00:5e:00:00:01", "multicast"), ("zz:00:00:00:00:01", "invalid MAC address")):
        client = eng.client()
        api = client.api
        import docker

        with pytest.raises(docker.errors.APIError) as info:
            api.create_container(
                "busybox",
                "true",
                host_config=api.create_host_config(network_mode="neta"),
                networking_config=api.create_networking_config({"neta": api.create_endpoint_config()}),
                mac_address=mac,
            )
        assert info.value.response.status_code == 400 and text in str(info.value)
    p = d("run", "--rm", "--network", "host", "--mac-address", "02:00:00:00:00:01", "busybox", "true", check=False)
    assert p.returncode != 0 and "mac-address" in p.stderr


def test_ip_range_and_aux_addresses(eng, tmp_path):
    """As Debian's dockerd 20.10 (measured): with --ip-range and no --gateway the gateway is the range's
    first address and IPAM.Config names no gateway; auxiliary addresses may lie in the subnet outside the
    range, or in the range (skipped); a freed address is handed out again at once, lowest first."""
    d = eng.docker
    d(
        "network",
        "create",
        "--subnet",
        "10.73.0.0/24",
        "--ip-range",
        "10.73.0.128/29",
        "--aux-address",
        "router=10.73.0.129",
        "--aux-address",
        "outside=10.73.0.5",
        "ranged",
    )
    names = ["rng0", "rng1", "rng2", "rng3"]
    try:
        ipam = json.loads(d("network", "inspect", "-f", "{{json .IPAM.Config}}", "ranged").stdout)
        assert ipam == [
            {
                "Subnet": "10.73.0.0/24",
                "IPRange": "10.73.0.128/29",
                "AuxiliaryAddresses": {"router": "10.73.0.129", "outside": "10.73.0.5"},
            }
        ]
        for name in names[:3]:
            d("run", "-d", "--name", name, "--network", "ranged", "busybox", "sleep", "300")
        # .128 is the gateway, .129 reserved: the range's next addresses, in order
        assert [addresses(eng, n)["eth0"] for n in names[:3]] == ["10.73.0.130", "10.73.0.131", "10.73.0.132"]
        ep = json.loads(d("inspect", "-f", "{{json .NetworkSettings.Networks.ranged}}", "rng0").stdout)
        assert ep["Gateway"] == "10.73.0.128"
        route = d("exec", "rng0", "ip", "-4", "route", "show", "default").stdout
        assert route.startswith("default via 10.73.0.128 dev eth0")
        assert d("exec", "rng0", "ping", "-c", "1", "-W", "2", "10.73.0.128", check=False).returncode == 0
        d("rm", "-f", "rng1")
        d("run", "-d", "--name", "rng3", "--network", "ranged", "busybox", "sleep", "300")
        assert addresses(eng, "rng3")["eth0"] == "10.73.0.131"  # the freed one, at once
        # a fixed address may lie outside the range, never on a reserved one
        d("run", "-d", "--name", "rngfix", "--network", "ranged", "--ip", "10.73.0.50", "busybox", "sleep", "300")
        assert addresses(eng, "rngfix")["eth0"] == "10.73.0.50"
        for reserved in ("10.73.0.129", "10.73.0.5"):
            p = d("run", "--rm", "--network", "ranged", "--ip", reserved, "busybox", "true", check=False)
            assert p.returncode != 0 and "not assignable" in p.stderr
    finally:
        d("rm", "-f", *names, "rngfix", check=False)
        d("network", "rm", "ranged", check=False)
    # the CLI checks some of these itself: the engine's own checks, through docker-py
    import docker

    api = eng.client().api
    for pool, text in (
        ({"subnet": "10.74.0.0/24", "iprange": "10.75.0.0/28"}, "not within subnet"),
        ({"subnet": "10.74.0.0/24", "aux_addresses": {"x": "10.75.0.1"}}, "must belong to the master pool"),
        # dockerd's words when an auxiliary address is the gateway, given or picked (the range's first)
        ({"subnet": "10.74.0.0/24", "aux_addresses": {"x": "10.74.0.1"}}, "(x:10.74.0.1): Address already in use"),
        (
            {"subnet": "10.74.0.0/24", "gateway": "10.74.0.254", "aux_addresses": {"x": "10.74.0.254"}},
            "Address already in use",
        ),
        (
            {"subnet": "10.74.0.0/24", "iprange": "10.74.0.64/26", "aux_addresses": {"x": "10.74.0.64"}},
            "Address already in use",
        ),
        ({"iprange": "10.74.0.0/28"}, "need a subnet"),
    ):
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(**pool)])
        with pytest.raises(docker.errors.APIError) as info:
            api.create_network("badnet", ipam=ipam)
        assert info.value.response.status_code == 400 and text in str(info.value)
    assert "badnet" not in d("network", "ls", "--format", "{{.Name}}").stdout


def test_compose_style_disconnect_and_reconnect_of_the_primary_network(eng):
    """docker-compose 1.29 creates a container on its first network, then disconnects it from that
    network and connects it again with the service's aliases, before starting it."""
    client = eng.client()
    api = client.api
    c = api.create_container(
        "busybox",
        ["sleep", "300"],
        name="cmp-web-1",
        host_config=api.create_host_config(network_mode="neta"),
        networking_config=api.create_networking_config({"neta": api.create_endpoint_config(aliases=["web"])}),
    )
    try:
        api.disconnect_container_from_network(c["Id"], "neta")
        api.connect_container_to_network(c["Id"], "neta", aliases=["web", "frontend"])
        api.connect_container_to_network(c["Id"], "netb", aliases=["web"])
        nets = api.inspect_container(c["Id"])["NetworkSettings"]["Networks"]
        assert set(nets) == {"neta", "netb"} and nets["neta"]["Aliases"] == ["web", "frontend"]
        api.start(c["Id"])
        addrs = addresses(eng, "cmp-web-1")
        assert addrs["eth0"].startswith("10.71.0.") and addrs["eth1"].startswith("10.72.0.")
        # a running container leaves its primary network and comes back to it
        api.disconnect_container_from_network(c["Id"], "neta")
        assert set(addresses(eng, "cmp-web-1")) == {"lo", "eth1"}
        api.connect_container_to_network(c["Id"], "neta")
        assert set(addresses(eng, "cmp-web-1")) == {"lo", "eth0", "eth1"}
        # disconnected from everything, it rejoins its NetworkMode at the next start
        api.disconnect_container_from_network(c["Id"], "neta")
        api.disconnect_container_from_network(c["Id"], "netb")
        api.restart(c["Id"], timeout=0)
        assert addresses(eng, "cmp-web-1")["eth0"].startswith("10.71.0.")
    finally:
        api.remove_container(c["Id"], force=True)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="needs docker-compose (Debian's, 1.29)")
def test_docker_compose_services_find_each_other(eng, tmp_path):
    import subprocess

    (tmp_path / "docker-compose.yml").write_text(
        "version: '3.8'\n"
        "services:\n"
        "  kv:\n    image: busybox\n    command: [httpd, -f, -p, '8080', -h, /etc]\n    networks: [back]\n"
        "  web:\n    image: busybox\n    command: [sleep, '300']\n    networks: [back, front]\n"
        "  edge:\n    image: busybox\n    command: [sleep, '300']\n"
        "    networks:\n      front:\n        aliases: [gateway]\n"
        "networks:\n  back: {}\n  front: {}\n"
    )

    def compose(*args):
        p = subprocess.run(
            ["docker-compose", "-p", "cmpt", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=eng.env(),
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    try:
        compose("up", "-d", "--scale", "kv=2")
        kv = sorted(
            eng.docker("inspect", "-f", '{{(index .NetworkSettings.Networks "cmpt_back").IPAddress}}', n).stdout.strip()
            for n in ("cmpt_kv_1", "cmpt_kv_2")
        )
        out = eng.docker("exec", "cmpt_web_1", "nslookup", "kv").stdout
        assert all(ip in out for ip in kv)
        hostnames = {eng.docker("exec", n, "hostname").stdout for n in ("cmpt_kv_1", "cmpt_kv_2")}
        assert eng.docker("exec", "cmpt_web_1", "wget", "-q", "-O-", "http://kv:8080/hostname").stdout in hostnames
        assert eng.docker("exec", "cmpt_web_1", "nslookup", "gateway").returncode == 0
        assert eng.docker("exec", "cmpt_edge_1", "nslookup", "kv", check=False).returncode != 0  # not on back
        compose("restart")
        out = eng.docker("exec", "cmpt_web_1", "nslookup", "kv").stdout
        assert out.count("Address:") == 3  # the server and both kv containers
    finally:
        compose("down", "-v")
    assert "cmpt_back" not in eng.docker("network", "ls", "--format", "{{.Name}}").stdout
