"""End to end: bridge networking of the engine on a test host, driven by the real docker CLI.

The engine runs in the test host's namespaces, so its bridge, veths and NAT rules live
there. Traffic goes only between this process (the host's root-side veth address) and the
test host, and inside the test host.
"""

import json
import socket
import threading
import time
import urllib.request

import pytest

from tests import images
from tests.integration.test_generic import create_generic

pytestmark = pytest.mark.integration

WEB = "mkdir -p /www && echo hello-dockyard > /www/index.html && exec httpd -f -p 80 -h /www"
UDP_ECHO = (
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 5353))\nwhile True:\n    d, p = s.recvfrom(512)\n"
    "    s.sendto(b'echo:' + d, p)\n"
)
FETCH = "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())\n"


def http_get(url, attempts=100):
    """GET url; retried while the server in the container is still starting (bounded)."""
    last = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read().decode().strip()
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError("no answer from %s: %r" % (url, last))


def udp_ask(host, port, payload, attempts=50):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for _ in range(attempts):
            s.sendto(payload, (host, port))
            try:
                return s.recvfrom(512)[0]
            except socket.timeout:
                continue
    raise AssertionError("no UDP answer from %s:%d" % (host, port))


class PeerServer:
    """A TCP server on the root-side veth address of a test host: records who connects."""

    def __init__(self, address):
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.peers = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\npeer=1")
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def machine(dockyard, make_host):
    host = make_host()
    create_generic(dockyard, host, "net1", "--engine-opt", "bip=172.18.0.1/16")
    dockyard.docker("net1", "load", "-i", str(images.busybox_tar()))
    return host


def test_published_ports_nat_and_inspect(dockyard, machine, tmp_path):
    host = machine

    def docker(*args, **kw):
        return dockyard.docker("net1", *args, **kw)

    cid = docker("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", WEB).stdout.strip()

    # from another namespace (this one, through the host's veth) and from the host itself
    assert http_get("http://%s:8080/" % host.ip) == "hello-dockyard"
    for url in ("http://127.0.0.1:8080/", "http://%s:8080/" % host.ip):
        out = host.exec(["python3", "-c", FETCH, url])
        assert out.stdout.strip() == "hello-dockyard", out.stderr

    inspect = json.loads(docker("inspect", "web").stdout)[0]
    ns = inspect["NetworkSettings"]
    assert ns["IPAddress"].startswith("172.18.") and ns["Gateway"] == "172.18.0.1"
    assert ns["IPPrefixLen"] == 16 and ns["MacAddress"].startswith("02:42:ac:12:")
    # as dockerd 20.10: every address means IPv4's and IPv6's, the same port
    assert ns["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]}
    bridge = ns["Networks"]["bridge"]
    assert bridge["IPAddress"] == ns["IPAddress"] and bridge["EndpointID"] and bridge["NetworkID"]
    assert docker("port", "web").stdout.splitlines() == ["80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080"]
    assert docker("port", "web", "80").stdout.splitlines()[0] == "0.0.0.0:8080"
    assert "0.0.0.0:8080->80/tcp" in docker("ps").stdout
    out = host.exec(["python3", "-c", FETCH, "http://[::1]:8080/"])  # the IPv6 listener, to the IPv4 container
    assert out.stdout.strip() == "hello-dockyard", out.stderr

    # inside: eth0 with that address, default route via the bridge, lo up
    addrs = docker("exec", "web", "ip", "-o", "-4", "addr").stdout
    assert "eth0    inet %s/16" % ns["IPAddress"] in addrs and "lo    inet 127.0.0.1/8" in addrs
    assert docker("exec", "web", "ip", "route").stdout.startswith("default via 172.18.0.1 dev eth0")
    resolv = docker("exec", "web", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127." not in resolv

    # the network side on the host: bridge, NAT rule, forwarding
    assert "172.18.0.1/16" in host.exec("ip -o -4 addr show dockyard0").stdout
    nft = host.exec("nft list table ip dockyard").stdout
    assert 'ip saddr 172.18.0.0/16 oifname != "dockyard0" masquerade' in nft
    assert host.exec("cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"

    # outbound: the container reaches this namespace, masqueraded to the host's address
    peer = PeerServer(host.root_ip)
    try:
        got = docker("exec", "web", "wget", "-qO-", "http://%s:%d/" % (host.root_ip, peer.port))
        assert got.stdout.strip() == "peer=1"
        assert peer.peers == [host.ip]
    finally:
        peer.close()

    # network ls / inspect list the container on the bridge
    rows = [line.split()[1:] for line in docker("network", "ls").stdout.splitlines()[1:]]
    assert rows == [["bridge", "bridge", "local"], ["host", "host", "local"], ["none", "null", "local"]]
    net = json.loads(docker("network", "inspect", "bridge").stdout)[0]
    assert net["IPAM"]["Config"] == [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]
    assert net["Containers"][cid]["Name"] == "web"
    assert net["Containers"][cid]["IPv4Address"] == ns["IPAddress"] + "/16"

    # the same port again: refused at start like dockerd
    dup = docker("run", "-d", "--name", "web2", "-p", "8080:80", "busybox", "sh", "-c", WEB, check=False)
    assert dup.returncode != 0 and "port is already allocated" in dup.stderr

    # -P: a random host port for every exposed port
    docker("run", "-d", "--name", "auto", "-P", "--expose", "80", "busybox", "sh", "-c", WEB)
    mapped = docker("port", "auto", "80").stdout.splitlines()[0]
    ip, port = mapped.rsplit(":", 1)
    assert ip == "0.0.0.0" and int(port) >= 32768
    assert http_get("http://%s:%s/" % (host.ip, port)) == "hello-dockyard"
    auto_ip = json.loads(docker("inspect", "auto").stdout)[0]["NetworkSettings"]["IPAddress"]
    assert auto_ip != ns["IPAddress"]

    # containers reach each other over the bridge
    assert docker("exec", "auto", "wget", "-qO-", "http://%s/" % ns["IPAddress"]).stdout.strip() == "hello-dockyard"

    # published ports outlive an engine restart: the proxies live in the supervisors
    dockyard("regenerate-certs", "-f", "net1")
    assert http_get("http://%s:8080/" % host.ip) == "hello-dockyard"
    assert docker("port", "web").stdout.splitlines()[0] == "80/tcp -> 0.0.0.0:8080"

    # removal frees the port and the address
    docker("rm", "-f", "web")
    with pytest.raises(OSError):
        urllib.request.urlopen("http://%s:8080/" % host.ip, timeout=5)
    docker("run", "-d", "--name", "web3", "-p", "8080:80", "busybox", "sh", "-c", WEB)
    assert http_get("http://%s:8080/" % host.ip) == "hello-dockyard"


def test_udp_none_host_and_user_defined(dockyard, machine):
    host = machine

    def docker(*args, **kw):
        return dockyard.docker("net1", *args, **kw)

    # --network none: only lo, and it is up
    links = docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and ": lo:" in links[0] and "UP" in links[0]
    ns = json.loads(docker("inspect", docker("create", "--network", "none", "busybox").stdout.strip()).stdout)[0][
        "NetworkSettings"
    ]
    assert list(ns["Networks"]) == ["none"] and ns["IPAddress"] == ""

    # --network host: the host's own interfaces
    addrs = docker("run", "--rm", "--network", "host", "busybox", "ip", "-o", "-4", "addr").stdout
    assert host.ip in addrs

    # UDP publish, answered by a python server in a Debian image
    docker("load", "-i", str(images.python_tar()))
    docker("run", "-d", "--name", "udp", "-p", "5353:5353/udp", "pyweb", "python3", "-c", UDP_ECHO)
    assert docker("port", "udp").stdout.splitlines() == ["5353/udp -> 0.0.0.0:5353", "5353/udp -> [::]:5353"]
    assert udp_ask(host.ip, 5353, b"ping") == b"echo:ping"

    # a user-defined bridge network: its own subnet and bridge, published ports work the same
    net_id = docker("network", "create", "--subnet", "10.90.0.0/24", "appnet").stdout.strip()
    assert "10.90.0.1/24" in host.exec("ip -o -4 addr show br-%s" % net_id[:12]).stdout
    docker("run", "-d", "--name", "api", "--network", "appnet", "-p", "8090:80", "busybox", "sh", "-c", WEB)
    assert http_get("http://%s:8090/" % host.ip) == "hello-dockyard"
    ns = json.loads(docker("inspect", "api").stdout)[0]["NetworkSettings"]
    assert ns["Networks"]["appnet"]["IPAddress"].startswith("10.90.0.")
    assert ns["Networks"]["appnet"]["NetworkID"] == net_id
    assert docker("port", "api", "80").stdout.splitlines()[0] == "0.0.0.0:8090"
    busy = docker("network", "rm", "appnet", check=False)
    assert busy.returncode != 0 and "has active endpoints" in busy.stderr
    docker("rm", "-f", "api")
    assert docker("network", "rm", "appnet").stdout.strip() == "appnet"
    assert "br-%s" % net_id[:12] not in host.exec("ip -o link").stdout

    # unknown networks are refused at create
    bad = docker("run", "--rm", "--network", "nosuchnet", "busybox", "true", check=False)
    assert bad.returncode != 0 and "network nosuchnet not found" in bad.stderr
