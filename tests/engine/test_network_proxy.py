"""Userland port proxies (TCP and UDP) forwarding inside a throwaway network namespace."""

import os
import shutil
import socket
import threading

import pytest

from dockyard.engine.network.portproxy import PortBindError, TcpProxy, UdpProxy, proxies_for, start_all
from tests.engine.netns_helper import TempNetns, cleanup_stale

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2 for a network namespace"
)


@pytest.fixture
def netns():
    cleanup_stale()
    ns = TempNetns()
    yield ns
    ns.delete()


def _tcp_upper_server():
    """Reads until EOF, answers the upper-cased bytes, closes: exercises half-close."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn):
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.sendall(data.upper())
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ask(port, payload, host="127.0.0.1"):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        out += chunk
    c.close()
    return out


def test_tcp_forwarding_half_close_and_concurrency(netns):
    def scenario():
        srv = _tcp_upper_server()
        port = _free_port()
        proxy = TcpProxy("0.0.0.0", port, "127.0.0.1", srv.getsockname()[1]).start()
        try:
            assert _ask(port, b"hello") == b"HELLO"
            big = os.urandom(3 << 20).hex().encode()  # 6 MiB each way, in many segments
            assert _ask(port, big) == big.upper()
            results = []

            def worker(i):
                results.append(_ask(port, b"client %d" % i))

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(results) == sorted(b"CLIENT %d" % i for i in range(20))
        finally:
            proxy.stop()
            srv.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)

    netns.run(scenario)


def test_tcp_target_not_listening_closes_the_client(netns):
    def scenario():
        port, dead = _free_port(), _free_port()
        proxy = TcpProxy("127.0.0.1", port, "127.0.0.1", dead).start()
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                assert c.recv(10) == b""
            except ConnectionResetError:
                pass
            c.close()
        finally:
            proxy.stop()

    netns.run(scenario)


def test_stop_drops_open_connections(netns):
    def scenario():
        held = []
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = _free_port()
        proxy = TcpProxy("127.0.0.1", port, "127.0.0.1", srv.getsockname()[1]).start()
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn, _ = srv.accept()
        held.append(conn)
        c.sendall(b"x")
        assert conn.recv(1) == b"x"
        proxy.stop()
        try:
            assert c.recv(1) == b""
        except ConnectionResetError:
            pass
        c.close()
        conn.close()
        srv.close()

    netns.run(scenario)


def test_udp_forwarding_keeps_clients_apart(netns):
    def scenario():
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind(("127.0.0.1", 0))

        def serve():
            while True:
                try:
                    data, peer = echo.recvfrom(65536)
                except OSError:
                    return
                echo.sendto(b"re:" + data, peer)

        threading.Thread(target=serve, daemon=True).start()
        port = _free_port(socket.SOCK_DGRAM)
        proxy = UdpProxy("0.0.0.0", port, "127.0.0.1", echo.getsockname()[1]).start()
        clients = []
        try:
            for i in range(3):
                c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                c.settimeout(10)
                clients.append(c)
                c.sendto(b"ping %d" % i, ("127.0.0.1", port))
            for i, c in enumerate(clients):
                data, peer = c.recvfrom(100)
                assert data == b"re:ping %d" % i
                assert peer == ("127.0.0.1", port)  # replies come from the published port
        finally:
            proxy.stop()
            echo.close()
            for c in clients:
                c.close()

    netns.run(scenario)


def test_bind_conflict_message_and_start_all_rolls_back(netns):
    def scenario():
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        free = _free_port()
        first = TcpProxy("127.0.0.1", free, "127.0.0.1", 1)
        with pytest.raises(PortBindError) as info:
            start_all([first, TcpProxy("127.0.0.1", taken, "127.0.0.1", 1)])
        assert str(info.value) == (
            "Error starting userland proxy: listen tcp4 127.0.0.1:%d: bind: address already in use" % taken
        )
        # the proxy started before the failure was stopped again: its port is free
        again = socket.socket()
        again.bind(("127.0.0.1", free))
        again.close()
        busy.close()

    netns.run(scenario)


def test_proxies_for_settings():
    settings = {
        "IPAddress": "172.18.0.2",
        "Ports": {
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
            "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}],
            "443/tcp": None,
        },
    }
    got = sorted(repr(p) for p in proxies_for(settings))
    assert got == [
        "<TcpProxy 0.0.0.0:8080 -> 172.18.0.2:80>",
        "<TcpProxy 127.0.0.1:8081 -> 172.18.0.2:80>",
        "<UdpProxy 0.0.0.0:5353 -> 172.18.0.2:53>",
    ]
    assert proxies_for({"IPAddress": "", "Ports": {}}) == []


SUPERVISOR_LIKE = r"""
import ctypes, os, selectors, socket, sys, threading
from dockyard.engine.network.portproxy import TAG, TcpProxy, UdpProxy, start_all

# Upstream servers in a child forked first (later forks would land in the new pid namespace).
tcp_srv = socket.socket(); tcp_srv.bind(("127.0.0.1", 0)); tcp_srv.listen(8)
udp_srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp_srv.bind(("127.0.0.1", 0))
if os.fork() == 0:
    sel = selectors.DefaultSelector()
    sel.register(tcp_srv, selectors.EVENT_READ); sel.register(udp_srv, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is udp_srv:
                d, p = udp_srv.recvfrom(100); udp_srv.sendto(b"u:" + d, p)
            else:
                c, _ = tcp_srv.accept(); data = b""
                while not data.endswith(b"\n"):
                    data += c.recv(100)
                c.sendall(data.upper()); c.close()
assert ctypes.CDLL(None, use_errno=True).unshare(0x20000000) == 0  # CLONE_NEWPID, as the supervisor
try:
    threading.Thread(target=lambda: None).start()
    print("threads still work", flush=True)
except RuntimeError:
    pass
sel = selectors.DefaultSelector()
ports = [int(p) for p in sys.argv[1:3]]
proxies = start_all([TcpProxy("127.0.0.1", ports[0], "127.0.0.1", tcp_srv.getsockname()[1]),
                     UdpProxy("127.0.0.1", ports[1], "127.0.0.1", udp_srv.getsockname()[1])], sel)
sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", None))
print("ready", flush=True)
while True:
    for key, events in sel.select():
        kind, obj = key.data
        if kind == TAG:
            obj(events)
        elif not sys.stdin.readline():
            for p in proxies:
                p.stop()
            print("stopped %d" % len([k for k in sel.get_map().values() if k.data[0] == TAG]), flush=True)
            sys.exit(0)
"""


def test_proxies_need_no_threads_in_a_supervisor_like_process(netns):
    import subprocess
    import sys

    from tests.engine.netns_helper import REPO

    tcp_port, udp_port = netns.run(_free_port), netns.run(_free_port, socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        ["nsenter", "--net=" + netns.path, sys.executable, "-c", SUPERVISOR_LIKE, str(tcp_port), str(udp_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert proc.stdout.readline() == "ready\n"

        def clients():
            answers = []
            for i in range(5):
                c = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)
                c.sendall(b"line %d\n" % i)
                answers.append(c.recv(100))
                c.close()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.settimeout(10)
            u.sendto(b"dgram", ("127.0.0.1", udp_port))
            answers.append(u.recvfrom(100)[0])
            u.close()
            return answers

        assert netns.run(clients) == [b"LINE %d\n" % i for i in range(5)] + [b"u:dgram"]
        proc.stdin.close()
        assert proc.stdout.readline() == "stopped 0\n"  # nothing of the proxies left registered
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
