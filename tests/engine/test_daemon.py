"""The daemon as a real process on a unix socket: system endpoints, routing, lifecycle, flags."""

import json
import os
import platform
import re
import signal
import socket
import stat
import subprocess
import sys

import pytest

from dockyard.provisioner.provision.bundle import bundle_version
from tests.engine.engine_helper import get_json, http_get

PING_HEADERS = {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-cache, no-store, must-revalidate",
    "pragma": "no-cache",
    "api-version": "1.50",
    "docker-experimental": "false",
    "ostype": "linux",
    "builder-version": "1",
    "swarm": "inactive",
    "server": "Docker/0.1.0 (linux)",
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def raw_exchange(path, data, expect_responses):
    """Send raw bytes on one unix connection; return the raw bytes of N responses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(data)
    buf = b""
    responses = []
    while len(responses) < expect_responses:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1")
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(buf) >= head_end + 4 + length:
                responses.append(buf[: head_end + 4 + length])
                buf = buf[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    sock.close()
    return responses


@pytest.fixture(scope="module")
def engine(module_engine_starter):
    """One engine shared by the read-only tests of this module."""
    proc = module_engine_starter(
        "--label",
        "region=test",
        "--label",
        "tier=ci",
        "--storage-driver",
        "vfs",
        "--registry-mirror",
        "https://mirror.example",
        "--insecure-registry",
        "10.1.0.0/16",
        "--insecure-registry",
        "myreg:5000",
    )
    proc.sock = module_engine_starter.socket
    proc.dir = module_engine_starter.dir
    return proc


@pytest.mark.parametrize("path", ["/_ping", "/v1.50/_ping", "/v1.41/_ping"])
def test_ping_get_and_head_headers(engine, path):
    status, headers, body = http_get(path, unix=engine.sock)
    assert status == 200 and body == b"OK"
    for name, value in PING_HEADERS.items():
        assert headers.get(name) == value, name
    status, headers, body = http_get(path, unix=engine.sock, method="HEAD")
    assert status == 200 and body == b""
    assert headers["content-length"] == "0"
    for name, value in PING_HEADERS.items():
        assert headers.get(name) == value, name


def test_version(engine, bundle):
    for path in ("/version", "/v1.50/version", "/v1.24/version"):
        v = get_json(path, unix=engine.sock)
        assert v["Version"] == "0.1.0"
        assert v["ApiVersion"] == "1.50" and v["MinAPIVersion"] == "1.24"
        assert v["Os"] == "linux"
        assert v["Arch"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
        assert v["KernelVersion"] == os.uname().release
        assert v["GoVersion"] == "python" + platform.python_version()
        assert RFC3339.match(v["BuildTime"]), v["BuildTime"]
        assert v["GitCommit"] == bundle_version(bundle[0]).source_sha256[:7]
        engine_component = v["Components"][0]
        assert engine_component["Name"] == "Engine" and engine_component["Version"] == "0.1.0"
        assert engine_component["Details"]["ApiVersion"] == "1.50"
        assert engine_component["Details"]["KernelVersion"] == os.uname().release


def _meminfo_total():
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def _pretty_name():
    with open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("no PRETTY_NAME")


def _cgroup_version():
    with open("/proc/self/mounts") as fh:
        types = [line.split()[2] for line in fh if line.split()[1] == "/sys/fs/cgroup"]
    return "2" if types and types[-1] == "cgroup2" else "1"


def test_info_reports_real_host_figures(engine):
    info = get_json("/v1.50/info", unix=engine.sock)
    assert info["NCPU"] == len(os.sched_getaffinity(0)) == os.cpu_count()
    assert info["MemTotal"] == _meminfo_total()
    assert info["KernelVersion"] == os.uname().release
    assert info["Architecture"] == os.uname().machine
    assert info["OperatingSystem"] == _pretty_name()
    assert info["OSType"] == "linux"
    assert info["Name"] == socket.gethostname()
    assert info["CgroupVersion"] == _cgroup_version()
    assert info["CgroupDriver"] == "cgroupfs"
    assert info["Driver"] == "vfs"
    assert info["DriverStatus"][0][0] == "Backing Filesystem"
    assert info["DockerRootDir"] == str(engine.dir / "data")
    assert info["Labels"] == ["region=test", "tier=ci"]
    assert info["ServerVersion"] == "0.1.0"
    assert info["Containers"] == 0 and info["Images"] == 0
    assert info["LoggingDriver"] == "json-file"
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    assert info["LiveRestoreEnabled"] is True
    assert info["DefaultRuntime"] in info["Runtimes"]
    assert isinstance(info["Warnings"], list) and isinstance(info["SecurityOptions"], list)
    assert info["HttpProxy"] == "" and info["HttpsProxy"] == "" and info["NoProxy"] == ""
    assert RFC3339.match(info["SystemTime"]), info["SystemTime"]
    with open(engine.dir / "data" / "engine-id") as fh:
        assert info["ID"] == fh.read().strip()
    reg = info["RegistryConfig"]
    assert reg["Mirrors"] == ["https://mirror.example/"]
    assert reg["IndexConfigs"]["docker.io"]["Mirrors"] == ["https://mirror.example/"]
    assert "10.1.0.0/16" in reg["InsecureRegistryCIDRs"] and "127.0.0.0/8" in reg["InsecureRegistryCIDRs"]
    assert reg["IndexConfigs"]["myreg:5000"]["Secure"] is False
    assert info["IndexServerAddress"] == "https://index.docker.io/v1/"


def test_version_too_new_and_too_old(engine):
    status, headers, body = http_get("/v1.51/version", unix=engine.sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": "client version 1.51 is too new. Maximum supported API version is 1.50"}
    status, _, body = http_get("/v1.12/_ping", unix=engine.sock)
    assert status == 400 and b"too old" in body


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/nope"),
        ("GET", "/v1.50/containerz/abc/json"),
        ("POST", "/_ping"),
        ("DELETE", "/info"),
    ],
)
def test_unknown_route_is_json_404(engine, method, path):
    status, headers, body = http_get(path, unix=engine.sock, method=method)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": "page not found"}
    assert headers["api-version"] == "1.50" and headers["server"] == "Docker/0.1.0 (linux)"


def test_keep_alive_and_chunked_request_body(engine):
    # One connection: a GET carrying a chunked body, then another request. The second
    # only parses if the server decoded and consumed the chunked body exactly.
    data = (
        b"GET /_ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /v1.50/version HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    first, second, third = raw_exchange(engine.sock, data, 3)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nOK")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and b'"ApiVersion":"1.50"' in second
    assert third.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in third


def test_malformed_request_gets_400(engine):
    (resp,) = raw_exchange(engine.sock, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert resp.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json\r\n" in resp


def test_many_concurrent_connections(engine):
    # 40 clients each stuck halfway through their headers must not stop a 41st.
    held = []
    for _ in range(40):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(engine.sock)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")
        held.append(s)
    status, _, body = http_get("/_ping", unix=engine.sock)
    assert status == 200 and body == b"OK"
    for s in held:
        s.sendall(b"\r\n")
    for s in held:
        data = b""
        while b"\r\n\r\nOK" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK")
        s.close()


def test_unix_socket_mode_and_sigterm_cleanup(start_engine):
    engine = start_engine()
    sock_path = start_engine.socket
    pidfile = start_engine.dir / "engine.pid"
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert pidfile.read_text() == str(engine.proc.pid)
    assert engine.stop(signal.SIGTERM) == 0
    assert not os.path.exists(sock_path)
    assert not pidfile.exists()
    assert "Daemon shutdown complete" in engine.stderr


def test_sigint_also_stops_cleanly(start_engine):
    proc = start_engine(module=True)  # also covers `python3 -m engine.daemon`
    assert proc.stop(signal.SIGINT) == 0
    assert not os.path.exists(start_engine.socket)


def test_stale_socket_replaced_and_live_pidfile_refused(start_engine):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(start_engine.socket)  # left behind by a crashed daemon: nobody listens
    stale.close()
    first = start_engine()
    assert http_get("/_ping", unix=start_engine.socket)[0] == 200
    second = start_engine("-H", "unix://%s" % (start_engine.dir / "other.sock"), wait=False)
    assert second.proc.wait(timeout=20) == 1
    assert "pid file found" in second.stderr
    assert first.proc.poll() is None


def test_engine_id_is_stable_across_restarts(start_engine):
    first = start_engine()
    id1 = get_json("/info", unix=start_engine.socket)["ID"]
    assert first.stop() == 0
    start_engine()
    assert get_json("/info", unix=start_engine.socket)["ID"] == id1


def test_config_file_with_flag_override(start_engine):
    cfg = start_engine.dir / "daemon.json"
    cfg.write_text(
        json.dumps(
            {
                "labels": ["from=file"],
                "registry-mirrors": ["https://m1.example/"],
                "storage-driver": "overlay2",
                "opts": {"bip": "172.30.0.1/16"},
                "debug": False,
            }
        )
    )
    start_engine("--config-file", str(cfg), "--label", "from=flag")
    info = get_json("/info", unix=start_engine.socket)
    assert info["Labels"] == ["from=flag"]  # flags replace the file's list
    assert info["RegistryConfig"]["Mirrors"] == ["https://m1.example/"]
    assert info["Driver"] == "overlay2"


def test_config_file_unknown_key_fails(start_engine):
    cfg = start_engine.dir / "daemon.json"
    cfg.write_text(json.dumps({"hosts": ["unix:///tmp/x.sock"], "bogus-key": 1}))
    proc = start_engine("--config-file", str(cfg), wait=False)
    assert proc.proc.wait(timeout=20) == 1
    assert "unknown keys: bogus-key" in proc.stderr


def test_tcp_without_tls_is_refused(start_engine):
    proc = start_engine("-H", "tcp://127.0.0.1:0", wait=False)
    assert proc.proc.wait(timeout=20) == 1
    assert "refusing to listen on tcp://127.0.0.1:0 without TLS" in proc.stderr
    assert "--insecure-tcp" in proc.stderr


def test_insecure_tcp_opt_in_warns_and_serves(start_engine):
    proc = start_engine("-H", "tcp://127.0.0.1:0", "--insecure-tcp")
    port = proc.tcp_port()
    assert "WARNING: API is accessible on http://127.0.0.1:%d without encryption" % port in proc.stderr
    status, headers, body = http_get("/_ping", port=port)
    assert status == 200 and body == b"OK"
    info = get_json("/info", port=port)
    assert any("without encryption" in w for w in info["Warnings"])


def test_version_flag_and_bad_flags(bundle):
    out = subprocess.run([sys.executable, str(bundle[0]), "--version"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    assert (
        out.stdout.strip() == "dockyard-engine version 0.1.0, build %s" % (bundle_version(bundle[0]).source_sha256[:7])
    )
    bad = subprocess.run(
        [sys.executable, str(bundle[0]), "--label", "novalue", "--data-root", "/nonexistent-dy"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 1 and "label 'novalue' is not KEY=VALUE" in bad.stderr
