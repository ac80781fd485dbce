"""The bridge network for real: bridge, veth, addresses, NAT and published ports, all inside
throwaway network namespaces (an "engine host" namespace, container namespaces and a client)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.engine.netns_helper import REPO, TempNetns, cleanup_stale

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nsenter", "unshare")),
    reason="needs root, iproute2, nsenter and unshare",
)
pytest.importorskip("pyroute2")

# The engine-host <-> client link; only inside namespaces this test creates.
HOST_ADDR, CLIENT_ADDR = "10.250.7.1", "10.250.7.2"
BIP = "172.30.0.1/24"

# Runs inside the engine-host namespace: one NetworkManager driven by commands on stdin.
AGENT = textwrap.dedent("""
    import json, sys
    from types import SimpleNamespace
    from dockyard.engine.network.manager import NetworkManager
    from dockyard.engine.network.portproxy import start_all
    mgr = NetworkManager(sys.argv[1], json.loads(sys.argv[2]), [])
    proxies = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if "container" in cmd:  # the manager reads a container's attributes, as the runtime's Container has them
            container = SimpleNamespace(**cmd["container"])
        try:
            if cmd["op"] == "connect":
                s = mgr.connect(container, cmd["pid"])
                proxies[cmd["container"]["id"]] = start_all(mgr.port_proxies(s))
                out = {"settings": s, "nat": mgr.nat_method, "warnings": mgr.warnings}
            elif cmd["op"] == "disconnect":
                for p in proxies.pop(cmd["container"]["id"], []):
                    p.stop()
                mgr.disconnect(container, None)
                out = {"leases": mgr.ipam.allocations()}
            elif cmd["op"] == "inspect":
                out = mgr.inspect(cmd["name"])
            elif cmd["op"] == "create_network":
                out = {"id": mgr.create_network(cmd["name"], cmd.get("subnet")).id}
            elif cmd["op"] == "remove_network":
                out = {"removed": mgr.remove_network(cmd["name"])}
            elif cmd["op"] == "hosts":
                out = {"hosts": mgr.hosts_file(container, cmd["settings"])}
        except Exception as exc:
            out = {"error": "%s: %s" % (type(exc).__name__, exc)}
        print(json.dumps(out), flush=True)
""")

SERVER = textwrap.dedent("""
    import socket, sys, threading
    def tcp(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(8)
        while True:
            c, peer = s.accept()
            c.sendall(("hello from %s, you are %s\\n" % (sys.argv[1], peer[0])).encode()); c.close()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
        while True:
            d, peer = s.recvfrom(100); s.sendto(b"udp:" + d, peer)
    threading.Thread(target=udp, args=(int(sys.argv[3]),), daemon=True).start()
    tcp(int(sys.argv[2]))
""")


class Agent:
    def __init__(self, host_ns, data_root, opts):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            ["nsenter", "--net=" + host_ns.path, sys.executable, "-c", AGENT, str(data_root), json.dumps(opts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(REPO),
        )

    def __call__(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "network agent died"
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def _container_process(host_ns):
    """A process in a new network namespace, started from the engine-host namespace."""
    proc = subprocess.Popen(
        ["nsenter", "--net=" + host_ns.path, "unshare", "--net", "--fork", "--kill-child", "sleep", "600"]
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the sleep's pid (unshare forks) once it exists
        kids = _children(proc.pid)
        if kids:
            return proc, kids[0]
        time.sleep(0.02)
    raise AssertionError("container process did not start")


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _in_pid_netns(pid, *argv, **kw):
    return subprocess.run(
        ["nsenter", "--net=/proc/%d/ns/net" % pid] + list(argv), capture_output=True, text=True, timeout=60, **kw
    )


def _wait_port(ns_runner, host, port):
    for _ in range(200):
        if ns_runner(lambda: _connects(host, port)):
            return
        time.sleep(0.05)
    raise AssertionError("nothing listens on %s:%d" % (host, port))


def _connects(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _recv_all(host, port):
    with socket.create_connection((host, port), timeout=10) as c:
        out = b""
        while True:
            chunk = c.recv(1000)
            if not chunk:
                return out.decode()
            out += chunk


def _udp(host, port, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(payload, (host, port))
        return s.recvfrom(100)[0]


@pytest.fixture
def world(tmp_path):
    cleanup_stale()
    host, client = TempNetns(), TempNetns()
    procs = []
    agent = None
    try:
        veth = "dynv%d" % (os.getpid() % 100000)
        subprocess.run(
            ["ip", "-n", host.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", client.name],
            check=True,
            capture_output=True,
        )
        host.sh("ip", "addr", "add", HOST_ADDR + "/30", "dev", veth)
        host.sh("ip", "link", "set", veth, "up")
        client.sh("ip", "addr", "add", CLIENT_ADDR + "/30", "dev", "eth0")
        client.sh("ip", "link", "set", "eth0", "up")
        agent = Agent(host, tmp_path / "data", {"bip": BIP, "bridge": "dytest0"})
        yield {"host": host, "client": client, "agent": agent, "procs": procs, "tmp": tmp_path}
    finally:
        if agent:
            agent.proc.kill()
            agent.proc.wait()
        for proc in procs:
            proc.kill()
            proc.wait()
        host.delete()
        client.delete()


def test_bridge_endpoint_ports_nat_and_disconnect(world):
    host, client, agent = world["host"], world["client"], world["agent"]
    proc, pid = _container_process(host)
    world["procs"].append(proc)
    container = {
        "id": "c0ffee" + "0" * 58,
        "name": "/web",
        "config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "9000/tcp": {}}},
        "host_config": {
            "NetworkMode": "default",
            "PortBindings": {
                "80/tcp": [{"HostIp": "", "HostPort": "18080"}],
                "53/udp": [{"HostIp": "", "HostPort": "15353"}],
            },
        },
    }
    out = agent(op="connect", container=container, pid=pid)
    assert "error" not in out, out
    s = out["settings"]
    assert out["nat"] == "nftables" and out["warnings"] == []
    assert (s["IPAddress"], s["Gateway"], s["IPPrefixLen"]) == ("172.30.0.2", "172.30.0.1", 24)
    assert s["MacAddress"] == "02:42:ac:1e:00:02"
    assert s["Ports"] == {  # as dockerd 20.10: every address is IPv4's and IPv6's, the same port
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}, {"HostIp": "::", "HostPort": "18080"}],
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "15353"}, {"HostIp": "::", "HostPort": "15353"}],
        "9000/tcp": None,
    }
    bridge_ep = s["Networks"]["bridge"]
    assert bridge_ep["IPAddress"] == "172.30.0.2" and bridge_ep["NetworkID"] and bridge_ep["EndpointID"]

    # inside the container: lo and eth0 with the address, default route via the bridge
    addrs = _in_pid_netns(pid, "ip", "-o", "-4", "addr").stdout
    assert "lo    inet 127.0.0.1/8" in addrs and "eth0    inet 172.30.0.2/24" in addrs
    assert _in_pid_netns(pid, "ip", "route").stdout.startswith("default via 172.30.0.1 dev eth0")
    links = host.sh("ip", "-o", "link", "show", "master", "dytest0").stdout
    assert "vethc0ffee00000" in links
    assert host.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert 'oifname != "dytest0" masquerade' in host.sh(
        "nft", "list", "table", "ip", "dockyard", check=False
    ).stdout or not shutil.which("nft")

    # a server in the container; published ports answer from the client namespace and on the host
    server = subprocess.Popen(
        ["nsenter", "--net=/proc/%d/ns/net" % pid, sys.executable, "-c", SERVER, "web", "80", "53"]
    )
    world["procs"].append(server)
    _wait_port(host.run, "172.30.0.2", 80)
    from_client = client.run(_recv_all, HOST_ADDR, 18080)
    assert from_client.startswith("hello from web, you are 172.30.0.1")  # via the userland proxy
    assert host.run(_recv_all, "127.0.0.1", 18080).startswith("hello from web")
    assert host.run(_recv_all, HOST_ADDR, 18080).startswith("hello from web")
    assert host.run(_recv_all, "::1", 18080).startswith("hello from web")  # IPv6 to an IPv4-only container
    assert client.run(_udp, HOST_ADDR, 15353, b"ping") == b"udp:ping"

    # outbound: the container reaches the client namespace, masqueraded to the host's address
    listener = subprocess.Popen(
        ["nsenter", "--net=" + client.path, sys.executable, "-c", SERVER, "client", "7070", "7071"]
    )
    world["procs"].append(listener)
    _wait_port(client.run, CLIENT_ADDR, 7070)
    seen = _in_pid_netns(
        pid,
        sys.executable,
        "-c",
        "import socket; c = socket.create_connection(('%s', 7070), timeout=10); "
        "print(c.recv(100).decode())" % CLIENT_ADDR,
    )
    assert seen.stdout.strip() == "hello from client, you are %s" % HOST_ADDR, seen.stderr

    # a second container: next address; asking for the same host port fails like dockerd
    proc2, pid2 = _container_process(host)
    world["procs"].append(proc2)
    clash = dict(
        container,
        id="beef" + "1" * 60,
        name="/other",
        host_config={"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]}},
    )
    out = agent(op="connect", container=clash, pid=pid2)
    assert out["error"].startswith("NetworkError: driver failed programming external connectivity on endpoint other (")
    assert out["error"].endswith("Bind for 127.0.0.1:18080 failed: port is already allocated")
    second = dict(clash, host_config={"NetworkMode": "bridge", "PublishAllPorts": True})
    out = agent(op="connect", container=second, pid=pid2)
    assert out["settings"]["IPAddress"] == "172.30.0.3"
    random_port = int(out["settings"]["Ports"]["80/tcp"][0]["HostPort"])
    assert random_port >= 32768 and set(out["settings"]["Ports"]) == {"80/tcp", "53/udp", "9000/tcp"}

    net = agent(op="inspect", name="bridge")
    assert net["IPAM"]["Config"] == [{"Subnet": "172.30.0.0/24", "Gateway": "172.30.0.1"}]
    assert net["Options"]["com.docker.network.bridge.name"] == "dytest0"
    assert net["Containers"][container["id"]]["IPv4Address"] == "172.30.0.2/24"
    assert net["Containers"][container["id"]]["Name"] == "web"

    out = agent(op="disconnect", container=container)
    assert out["leases"] == {"172.30.0.3": second["id"]}
    assert "vethc0ffee00000" not in host.sh("ip", "-o", "link").stdout
    assert "eth0" not in _in_pid_netns(pid, "ip", "-o", "link").stdout
    assert not client.run(_connects, HOST_ADDR, 18080)  # the proxy is gone with it
    assert container["id"] not in agent(op="inspect", name="bridge")["Containers"]


def test_none_and_host_modes(world):
    host, agent = world["host"], world["agent"]
    proc, pid = _container_process(host)
    world["procs"].append(proc)
    none = {
        "id": "a" * 64,
        "name": "/quiet",
        "config": {},
        "host_config": {"NetworkMode": "none", "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "18081"}]}},
    }
    out = agent(op="connect", container=none, pid=pid)
    s = out["settings"]
    assert s["IPAddress"] == "" and s["Ports"] == {} and list(s["Networks"]) == ["none"]
    assert out["nat"] is None  # no bridge work was done for --network none
    links = _in_pid_netns(pid, "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and "lo:" in links[0] and "UP" in links[0]
    hostmode = {"id": "b" * 64, "name": "/h", "config": {}, "host_config": {"NetworkMode": "host"}}
    s = agent(op="connect", container=hostmode, pid=pid)["settings"]
    assert list(s["Networks"]) == ["host"] and s["IPAddress"] == ""
    assert agent(op="inspect", name="host")["Containers"][hostmode["id"]]["Name"] == "h"
    assert "dytest0" not in host.sh("ip", "-o", "link").stdout
    assert (
        agent(op="connect", container=dict(none, host_config={"NetworkMode": "mynet"}), pid=pid)["error"]
        == "InvalidParameter: network mynet not found"
    )


def test_user_defined_network(world):
    host, client, agent = world["host"], world["client"], world["agent"]
    net_id = agent(op="create_network", name="appnet", subnet="10.88.0.0/24")["id"]
    device = "br-" + net_id[:12]
    proc, pid = _container_process(host)
    world["procs"].append(proc)
    container = {
        "id": "d" * 64,
        "name": "/api",
        "config": {"Hostname": "api"},
        "host_config": {"NetworkMode": "appnet", "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "18090"}]}},
    }
    s = agent(op="connect", container=container, pid=pid)["settings"]
    # like moby: the deprecated top-level fields stay empty off the default bridge
    assert s["IPAddress"] == "" and list(s["Networks"]) == ["appnet"]
    ep = s["Networks"]["appnet"]
    assert (ep["IPAddress"], ep["Gateway"], ep["IPPrefixLen"], ep["NetworkID"]) == (
        "10.88.0.2",
        "10.88.0.1",
        24,
        net_id,
    )
    assert "vethddddddddddd" in host.sh("ip", "-o", "link", "show", "master", device).stdout
    assert agent(op="hosts", container=container, settings=s)["hosts"].endswith("10.88.0.2\tapi\n")
    server = subprocess.Popen(
        ["nsenter", "--net=/proc/%d/ns/net" % pid, sys.executable, "-c", SERVER, "api", "80", "53"]
    )
    world["procs"].append(server)
    _wait_port(host.run, "10.88.0.2", 80)
    assert client.run(_recv_all, HOST_ADDR, 18090).startswith("hello from api")
    # outbound NAT covers the new subnet too
    listener = subprocess.Popen(
        ["nsenter", "--net=" + client.path, sys.executable, "-c", SERVER, "client", "7080", "7081"]
    )
    world["procs"].append(listener)
    _wait_port(client.run, CLIENT_ADDR, 7080)
    seen = _in_pid_netns(
        pid,
        sys.executable,
        "-c",
        "import socket; c = socket.create_connection(('%s', 7080), timeout=10); "
        "print(c.recv(100).decode())" % CLIENT_ADDR,
    )
    assert seen.stdout.strip() == "hello from client, you are %s" % HOST_ADDR, seen.stderr
    assert agent(op="inspect", name="appnet")["Containers"][container["id"]]["IPv4Address"] == "10.88.0.2/24"
    assert "has active endpoints" in agent(op="remove_network", name="appnet")["error"]
    agent(op="disconnect", container=container)
    assert agent(op="remove_network", name="appnet") == {"removed": "appnet"}
    assert device not in host.sh("ip", "-o", "link").stdout
