"""Names on user-defined networks: the embedded DNS server at 127.0.0.11 in each container, with the real
docker CLI and docker-py against an engine in its own network namespace. The upstream resolver the engine
forwards to is a fake one this test runs on 127.0.0.1:53 of the engine's namespace (never the host's)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import threading

import pytest

from dockyard.engine.network import resolver
from dockyard.engine.network.netns import loopback_up, run_in_netns
from tests.engine.runtime_helper import RuntimeEngine

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("docker"), reason="needs root and the docker CLI")
pytest.importorskip("pyroute2")

OUTSIDE_NAME, OUTSIDE_IP = "outside.example", "192.0.2.7"


def query(name, qtype=resolver.TYPE_A, qid=0x1234):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


class FakeUpstream:
    """A resolver on 127.0.0.1:53 of the engine's netns: OUTSIDE_NAME -> OUTSIDE_IP, else NXDOMAIN."""

    def __init__(self, netns):
        def open_socket():
            loopback_up()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 53))
            return sock

        self.sock = run_in_netns(netns, open_socket)
        self.sock.settimeout(0.5)
        self.asked = []
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = resolver.parse_query(data)
            if q is None:
                continue
            self.asked.append(q.name)
            if q.name == OUTSIDE_NAME:
                self.sock.sendto(resolver.response(data, q, resolver.NOERROR, [OUTSIDE_IP]), peer)
            else:
                self.sock.sendto(resolver.response(data, q, resolver.NXDOMAIN), peer)

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def eng():
    e = RuntimeEngine()
    upstream = None
    try:
        e.start()
        e.load_busybox()
        upstream = FakeUpstream("/proc/%d/ns/net" % e.proc.proc.pid)
        e.upstream = upstream
        e.docker("network", "create", "--subnet", "10.81.0.0/24", "app")
        e.docker("network", "create", "--subnet", "10.82.0.0/24", "other")
        e.docker("network", "create", "--internal", "--subnet", "10.83.0.0/24", "sealed")
        yield e
    finally:
        if upstream is not None:
            e.upstream.close()
        e.cleanup()


def lookup(eng, src, name):
    """The addresses `name` resolves to in container `src` (busybox nslookup), [] when it does not."""
    p = eng.docker("exec", src, "nslookup", "-type=a", name, check=False)
    if p.returncode != 0:
        return []
    lines = p.stdout.split("Name:", 1)[-1].splitlines() if "Name:" in p.stdout else []
    return sorted(line.split()[-1] for line in lines if line.startswith("Address"))


def ip_of(eng, name, network):
    fmt = '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % network
    return eng.docker("inspect", "-f", fmt, name).stdout.strip()


def test_names_aliases_and_services_on_shared_networks(eng):
    d = eng.docker
    d("run", "-d", "--name", "db", "--network", "app", "--network-alias", "kv", "busybox", "sleep", "300")
    d(
        "run",
        "-d",
        "--name",
        "web1",
        "--network",
        "app",
        "--label",
        "com.docker.compose.service=web",
        "busybox",
        "sleep",
        "300",
    )
    d("run", "-d", "--name", "web2", "--network", "app", "--network-alias", "web", "busybox", "sleep", "300")
    d("run", "-d", "--name", "lone", "--network", "other", "--dns", "127.0.0.1", "busybox", "sleep", "300")
    try:
        resolv = d("exec", "db", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 127.0.0.11" in resolv and "ndots:0" in resolv
        db_ip, web1, web2 = ip_of(eng, "db", "app"), ip_of(eng, "web1", "app"), ip_of(eng, "web2", "app")
        assert lookup(eng, "web1", "db") == [db_ip]
        assert lookup(eng, "web1", "kv") == [db_ip]  # --network-alias
        assert lookup(eng, "web1", "DB.") == [db_ip]  # case and the root dot do not matter
        assert lookup(eng, "web1", "db.app") == [db_ip]  # NAME.NETWORK
        db_id = d("inspect", "-f", "{{.Id}}", "db").stdout.strip()
        assert lookup(eng, "web1", db_id[:12]) == [db_ip]
        assert lookup(eng, "db", "web") == sorted([web1, web2])  # compose service label + alias: both
        assert d("exec", "web1", "ping", "-c", "1", "-W", "2", "kv").returncode == 0
        # not on a shared network: not found (and the name is not leaked to the other network)
        assert lookup(eng, "lone", "db") == []
        assert lookup(eng, "db", "lone") == []
        # other names go to the upstream resolver (--dns here), forwarded by the engine
        assert lookup(eng, "lone", OUTSIDE_NAME) == [OUTSIDE_IP]
        assert OUTSIDE_NAME in eng.upstream.asked
        assert lookup(eng, "lone", "missing.example") == []
        # connect: the names of the new network resolve at once, both ways
        d("network", "connect", "--alias", "loner", "app", "lone")
        assert lookup(eng, "lone", "db") == [db_ip]
        assert lookup(eng, "db", "loner") == [ip_of(eng, "lone", "app")]
        d("network", "disconnect", "app", "lone")
        assert lookup(eng, "db", "loner") == []
        # a container that goes is no longer found
        d("rm", "-f", "web2")
        assert lookup(eng, "db", "web") == [web1]
        # the engine restarts: running containers' resolvers come back (RuntimeEngine's restart puts the
        # engine in a new network namespace: the fake upstream moves there too)
        eng.restart()
        eng.upstream.close()
        eng.upstream = FakeUpstream("/proc/%d/ns/net" % eng.proc.proc.pid)
        assert lookup(eng, "web1", "kv") == [db_ip]
        assert lookup(eng, "lone", "db") == []
        assert lookup(eng, "lone", OUTSIDE_NAME) == [OUTSIDE_IP]
    finally:
        d("rm", "-f", "db", "web1", "web2", "lone", check=False)


def test_default_bridge_has_no_names_and_internal_networks_do_not_forward(eng):
    d = eng.docker
    d("run", "-d", "--name", "b1", "busybox", "sleep", "300")
    d("run", "-d", "--name", "in1", "--network", "sealed", "--dns", "127.0.0.1", "busybox", "sleep", "300")
    d("run", "-d", "--name", "in2", "--network", "sealed", "busybox", "sleep", "300")
    try:
        assert "127.0.0.11" not in d("exec", "b1", "cat", "/etc/resolv.conf").stdout
        p = d("run", "--rm", "busybox", "nslookup", "b1", check=False)
        assert p.returncode != 0
        assert lookup(eng, "in1", "in2") == [ip_of(eng, "in2", "sealed")]
        asked = len(eng.upstream.asked)
        assert lookup(eng, "in1", OUTSIDE_NAME) == []  # --internal: nothing leaves
        assert len(eng.upstream.asked) == asked
    finally:
        d("rm", "-f", "b1", "in1", "in2", check=False)


def test_hostile_packets_leave_the_resolver_answering(eng):
    d = eng.docker
    # target's upstream never answers (an unused address of its own network): each forward holds a worker
    d("run", "-d", "--name", "target", "--network", "app", "--dns", "10.81.0.254", "busybox", "sleep", "300")
    d("run", "-d", "--name", "witness", "--network", "other", "--dns", "127.0.0.1", "busybox", "sleep", "300")
    try:
        pid = int(d("inspect", "-f", "{{.State.Pid}}", "target").stdout)
        rng = random.Random(7)
        bad = [
            b"",
            b"\x00",
            b"\x12\x34" * 5,
            b"\xff" * 12,
            query("a" * 63 + ".b")[:20],
            struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\1\0\1",  # pointer loop
            struct.pack("!HHHHHH", 1, 0x0100, 5, 0, 0, 0) + b"\0\0\1\0\1",  # five questions
            struct.pack("!HHHHHH", 1, 0x8100, 1, 0, 0, 0) + b"\0\0\1\0\1",  # a response, not a query
            b"".join(bytes([63]) + b"x" * 63 for _ in range(8)) + b"\0",
        ] + [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 4096))) for _ in range(50)]

        def fire():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(1.0)
            try:
                for packet in bad:
                    sock.sendto(packet, ("127.0.0.11", 53))
                # TCP: a length that never comes, then garbage
                tcp = socket.create_connection(("127.0.0.11", 53), timeout=2)
                tcp.sendall(b"\xff\xff" + b"\0" * 100)
                tcp.close()
                sock.sendto(query("target", qid=0x4242), ("127.0.0.11", 53))
                while True:
                    reply = sock.recv(4096)
                    if reply[:2] == b"\x42\x42":
                        return reply
            finally:
                sock.close()

        reply = run_in_netns("/proc/%d/ns/net" % pid, fire)
        assert reply[3] & 0xF == resolver.NOERROR and struct.unpack("!H", reply[6:8])[0] == 1
        assert socket.inet_ntoa(reply[-4:]) == ip_of(eng, "target", "app")
        assert lookup(eng, "target", "target") == [ip_of(eng, "target", "app")]
        assert eng.client().ping()

        # a flood of forwarded queries from target takes its own worker slots only: another
        # container's lookups are still forwarded meanwhile
        def flood():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for i in range(200):
                    sock.sendto(query("n%d.flood.example" % i, qid=i), ("127.0.0.11", 53))
            finally:
                sock.close()

        run_in_netns("/proc/%d/ns/net" % pid, flood)
        assert lookup(eng, "witness", OUTSIDE_NAME) == [OUTSIDE_IP]
    finally:
        d("rm", "-f", "target", "witness", check=False)


def test_parse_and_answer_units():
    q = resolver.parse_query(query("Web.App"))
    assert q is not None and q.name == "web.app" and q.qtype == resolver.TYPE_A
    reply = resolver.response(query("web"), resolver.parse_query(query("web")), resolver.NOERROR, ["10.0.0.2"])
    assert reply[:2] == b"\x12\x34" and struct.unpack("!H", reply[6:8])[0] == 1 and reply[-4:] == bytes([10, 0, 0, 2])
    aaaa = resolver.response(query("web", resolver.TYPE_AAAA), resolver.parse_query(query("web", 28)), 0, ["10.0.0.2"])
    assert struct.unpack("!H", aaaa[6:8])[0] == 0  # a known name has no IPv6 address: empty answer
    for bad in (b"", b"\0" * 11, query("x")[:-1], b"\x00\x01\x01\x00\x00\x02" + b"\0" * 6):
        assert resolver.parse_query(bad) is None
