"""Hostile API input (issue 9, items 8 and 9) against a real engine: wrong types, bad names, negative and
absurd sizes, oversized bodies, floods of idle connections, huge and rotated logs.

Each crafted request gets its 400 (or 413), creates nothing (no container, volume, network, no file
under the data-root), and the engine still answers; a running container keeps running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.engine.engine_helper import EngineProcess, client_tls_context, http_get
from tests.engine.runtime_helper import busybox_engine

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")
N = ("--network", "none")


@pytest.fixture(scope="module")
def eng():
    if os.geteuid() != 0:
        pytest.skip("containers need root")
    with busybox_engine() as e:
        yield e


def api(eng, method, path, body=None, raw=None, headers=None):
    """(status, decoded JSON or raw bytes) of one request on the engine's unix socket."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = dict(headers or {})
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    status, resp_headers, payload = http_get(path, unix=eng.sock, method=method, body=data, headers=hdrs)
    if resp_headers.get("content-type") == "application/json" and payload:
        return status, json.loads(payload)
    return status, payload


def snapshot(eng):
    """What a create could leave behind: containers, volumes, networks, and the data-root's entries."""
    data = eng.dir / "data"

    def listing(sub):
        path = data / sub
        return sorted(os.listdir(path)) if path.is_dir() else []

    return {
        "containers": sorted(c["Id"] for c in api(eng, "GET", "/containers/json?all=1")[1]),
        "volumes": sorted(v["Name"] for v in api(eng, "GET", "/volumes")[1]["Volumes"]),
        "networks": sorted(n["Name"] for n in api(eng, "GET", "/networks")[1]),
        "containers_dir": listing("containers"),
        "volumes_dir": listing("volumes"),
        "overlay_dir": listing("overlay"),
    }


def assert_alive(eng):
    status, body = api(eng, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert eng.proc.proc.poll() is None


def create_body(**host_config):
    """A create body like the docker CLI's (image busybox, network none), with HostConfig overrides."""
    hc = {"NetworkMode": "none", "LogConfig": {"Type": "", "Config": {}}, "ConsoleSize": [0, 0], "Memory": 0}
    hc.update(host_config)
    return {"Image": "busybox", "Cmd": ["true"], "Env": None, "Labels": {}, "HostConfig": hc}


BAD_CREATES = [
    # (body, status, what the message says)
    (create_body(Privileged="false"), 400, "into Go struct field HostConfig.Privileged of type bool"),
    (create_body(AutoRemove=1), 400, "HostConfig.AutoRemove of type bool"),
    (dict(create_body(), Tty="true"), 400, "Go struct field Tty of type bool"),
    (create_body(Memory="1g"), 400, "HostConfig.Memory of type int64"),
    (create_body(Memory=1.5e9), 400, "HostConfig.Memory of type int64"),
    (create_body(Memory=10**30), 400, "HostConfig.Memory of type int64"),
    (create_body(Memory=-1), 400, "Minimum memory limit allowed is 6MB"),
    (create_body(MemorySwap=-2), 400, "invalid MemorySwap -2"),
    (create_body(ShmSize=-1), 400, "SHM size can not be less than 0"),
    (create_body(CpuShares=-5), 400, "Invalid CPU shares (-5)"),
    (create_body(CpuShares=10**7), 400, "Invalid CPU shares (10000000)"),
    (create_body(NanoCpus=-1), 400, "Range of CPUs is from 0.01"),
    (create_body(CpuQuota=-7), 400, "CPU cfs quota can not be less than 1ms"),
    (create_body(CpuPeriod=5), 400, "CPU cfs period can not be less than 1ms"),
    (create_body(PidsLimit=-5), 400, "invalid PidsLimit -5"),
    (create_body(PidsLimit="10"), 400, "HostConfig.PidsLimit of type int64"),
    (create_body(OomScoreAdj=5000), 400, "range for oom score adj is [-1000, 1000]"),
    (create_body(MemorySwappiness=101), 400, "valid memory swappiness range is 0-100"),
    (create_body(Ulimits=[{"Name": "nofile", "Soft": 10, "Hard": 5}]), 400, "soft limit must be less than or equal"),
    (create_body(Ulimits=[{"Name": "bogus", "Soft": 1, "Hard": 1}]), 400, "invalid ulimit type: bogus"),
    (create_body(Ulimits=[{"Name": "nofile", "Soft": -9, "Hard": 1}]), 400, "invalid ulimit nofile"),
    (create_body(Ulimits="nofile=1"), 400, "HostConfig.Ulimits of type []container.Ulimit"),
    (create_body(ConsoleSize=[-1, 80]), 400, "HostConfig.ConsoleSize of type uint"),
    (create_body(LogConfig={"Type": "json-file", "Config": {"max-size": "-1k"}}), 400, "invalid size: '-1k'"),
    (create_body(LogConfig={"Type": "json-file", "Config": {"max-size": "10q"}}), 400, "invalid suffix: 'q'"),
    (create_body(LogConfig={"Type": "json-file", "Config": {"max-size": "0"}}), 400, "max-size must be a positive"),
    (create_body(LogConfig={"Type": "json-file", "Config": {"max-file": "0"}}), 400, "max-file cannot be less than 1"),
    (create_body(LogConfig={"Type": "json-file", "Config": {"max-file": 3}}), 400, "LogConfig.Config of type string"),
    (create_body(LogConfig={"Type": "json-file", "Config": {"bogus": "1"}}), 400, "unknown log opt 'bogus'"),
    (create_body(Binds="/etc:/host"), 400, "HostConfig.Binds of type []string"),
    (create_body(Binds=["bad\n:/data"]), 400, "includes invalid characters for a local volume name"),
    (create_body(Binds=["/tmp:/"]), 400, "destination can't be '/'"),
    (create_body(Init=True), 400, "does not support --init yet"),
    (create_body(Mounts=[{"Type": "tmpfs", "Target": "//"}]), 400, "destination can't be '/'"),
    (create_body(Mounts=[{"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": -1}}]), 400, "tmpfs size"),
    (dict(create_body(), Cmd=5), 400, "Go struct field Cmd of type strslice.StrSlice"),
    (dict(create_body(), Env="A=B"), 400, "Go struct field Env of type []string"),
    (dict(create_body(), Labels={"a": 1}), 400, "Go struct field Labels of type string"),
    (dict(create_body(), Volumes={"/data": "x"}), 400, "Go struct field Volumes of type struct {}"),
    (dict(create_body(), Healthcheck={"Retries": -1}), 400, "Retries in Healthcheck cannot be negative"),
    ([create_body()], 400, "into Go value of type container.CreateRequest"),
]


@root_only
@pytest.mark.parametrize("body,status,message", BAD_CREATES, ids=[m for _, _, m in BAD_CREATES])
def test_crafted_create_is_refused_and_creates_nothing(eng, body, status, message):
    before = snapshot(eng)
    got, resp = api(eng, "POST", "/containers/create", body)
    assert got == status, resp
    assert message in resp["message"]
    assert "\n" not in resp["message"]
    assert snapshot(eng) == before
    assert_alive(eng)


@root_only
@pytest.mark.parametrize(
    "name",
    ["web\n", "web\r\n", "/web\n", "x", "-web", "we b", "web/../x", "\nweb", "a" * 3 + "\x00"],
)
def test_bad_container_names_are_refused(eng, name):
    from urllib.parse import quote

    before = snapshot(eng)
    status, resp = api(eng, "POST", "/containers/create?name=" + quote(name), create_body())
    assert status == 400, resp
    assert resp["message"].startswith("Invalid container name (")
    assert snapshot(eng) == before
    assert_alive(eng)


@root_only
def test_rename_to_a_name_with_a_newline_is_refused(eng):
    cid = eng.docker("create", *N, "--name", "renamer", "busybox", "true").stdout.strip()
    try:
        status, resp = api(eng, "POST", "/containers/renamer/rename?name=other%0A")
        assert status == 400 and resp["message"].startswith("Invalid container name (")
        assert api(eng, "GET", "/containers/%s/json" % cid)[1]["Name"] == "/renamer"
    finally:
        eng.docker("rm", "-f", cid)


@root_only
def test_oversized_and_deeply_nested_bodies(eng):
    before = snapshot(eng)
    huge = json.dumps(dict(create_body(), Labels={"k%d" % i: "v" * 100 for i in range(12000)})).encode()
    assert len(huge) > 1 << 20
    status, resp = api(eng, "POST", "/containers/create", raw=huge)
    assert status == 413 and "request body too large" in resp["message"]
    # The same body chunked (no Content-Length): cut off at the limit, not read whole.
    status, resp = chunked_post(eng.sock, "/containers/create", huge)
    assert status == 413
    nested = b"[" * 100000 + b"]" * 100000
    status, resp = api(eng, "POST", "/containers/create", raw=nested)
    assert status == 400 and resp["message"].startswith("invalid JSON")
    status, resp = api(eng, "POST", "/volumes/create", raw=b'{"Name": "v1", "Labels": ' + b'{"a":' * 5000 + b"}")
    assert status == 400
    assert snapshot(eng) == before
    assert_alive(eng)


def chunked_post(sock_path, path, payload):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sock_path)
    try:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            % path.encode()
        )
        try:
            for i in range(0, len(payload), 65536):
                part = payload[i : i + 65536]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before we were done: that is the point
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1])
        return status, data
    finally:
        s.close()


@root_only
def test_resize_with_negative_or_absurd_sizes_keeps_the_container_running(eng):
    cid = eng.docker("run", "-d", "-t", *N, "busybox", "sleep", "600").stdout.strip()
    try:
        for query in ("h=-1&w=80", "h=24&w=-1", "h=99999999&w=80", "h=abc&w=80", "h=1e3&w=80", "w=80", "h=24&w="):
            status, resp = api(eng, "POST", "/containers/%s/resize?%s" % (cid, query))
            assert status == 400, (query, resp)
            assert resp["message"].startswith("strconv.ParseUint: parsing "), resp
        time.sleep(0.3)
        state = api(eng, "GET", "/containers/%s/json" % cid)[1]["State"]
        assert state["Running"] and state["Status"] == "running"
        assert api(eng, "POST", "/containers/%s/resize?h=40&w=120" % cid)[0] == 200
        assert eng.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
        # exec: wrong types are refused and no exec instance is made
        execs_before = api(eng, "GET", "/containers/%s/json" % cid)[1]["ExecIDs"]
        for body in ({"Cmd": "ls"}, {"Cmd": ["ls"], "Privileged": "true"}, {"Cmd": ["ls"], "ConsoleSize": [1, -1]}):
            status, resp = api(eng, "POST", "/containers/%s/exec" % cid, body)
            assert status == 400 and resp["message"].startswith("invalid JSON: json: cannot unmarshal"), resp
        assert api(eng, "GET", "/containers/%s/json" % cid)[1]["ExecIDs"] == execs_before
        # update: wrong types and negative sizes change nothing
        hc_before = api(eng, "GET", "/containers/%s/json" % cid)[1]["HostConfig"]
        for body in (
            {"Memory": -1},
            {"CpuShares": "512"},
            {"PidsLimit": -3},
            {"MemorySwap": -5},
            {"RestartPolicy": {"Name": "bogus"}},
            {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": -1}},
        ):
            status, resp = api(eng, "POST", "/containers/%s/update" % cid, body)
            assert status == 400, (body, resp)
        assert api(eng, "GET", "/containers/%s/json" % cid)[1]["HostConfig"] == hc_before
        assert eng.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
    finally:
        eng.docker("rm", "-f", cid)
    assert_alive(eng)


@root_only
@pytest.mark.parametrize(
    "path,body,message",
    [
        ("/networks/create", {"Name": "net\n"}, "invalid network name"),
        ("/networks/create", {"Name": "../../etc"}, "invalid network name"),
        ("/networks/create", {"Name": "n1", "Internal": "yes"}, "Internal of type bool"),
        ("/networks/create", {"Name": "n1", "Labels": ["a"]}, "Labels of type map[string]string"),
        ("/networks/create", {"Name": "n1", "IPAM": {"Config": {"Subnet": "10.9.0.0/24"}}}, "IPAM.Config of type"),
        ("/volumes/create", {"Name": "vol\n"}, "includes invalid characters for a local volume name"),
        ("/volumes/create", {"Name": "v1", "Labels": {"a": 1}}, "Labels of type string"),
        ("/volumes/create", {"Name": 7}, "Name of type string"),
        ("/volumes/create", "v1", "into Go value of type volume.CreateOptions"),
    ],
)
def test_crafted_network_and_volume_creates(eng, path, body, message):
    before = snapshot(eng)
    status, resp = api(eng, "POST", path, body)
    assert status == 400, resp
    assert message in resp["message"]
    assert snapshot(eng) == before
    assert_alive(eng)


@root_only
def test_docker_cli_log_opts_validated(eng):
    p = eng.docker("run", "--rm", *N, "--log-opt", "max-size=-5", "busybox", "true", check=False)
    assert p.returncode != 0 and "invalid size: '-5'" in p.stderr
    p = eng.docker("run", "--rm", *N, "--log-opt", "max-file=0", "busybox", "true", check=False)
    assert p.returncode != 0 and "max-file cannot be less than 1" in p.stderr
    assert eng.docker("ps", "-aq").stdout == ""


# -- logs: streamed, rotated --------------------------------------------------------------------
def log_files(eng, cid):
    cdir = eng.dir / "data" / "containers" / cid
    return sorted(n for n in os.listdir(cdir) if n.startswith(cid + "-json.log"))


@root_only
def test_rotation_keeps_max_file_files_and_logs_reads_them_in_order(eng):
    script = "i=1; while [ $i -le 300 ]; do echo line-$i; i=$((i+1)); done"
    cid = eng.docker(
        "run", "-d", *N, "--log-opt", "max-size=1k", "--log-opt", "max-file=3", "busybox", "sh", "-c", script
    ).stdout.strip()
    try:
        assert eng.docker("wait", cid).stdout.strip() == "0"
        files = log_files(eng, cid)
        assert files == [cid + "-json.log", cid + "-json.log.1", cid + "-json.log.2"]
        cdir = eng.dir / "data" / "containers" / cid
        for name in files[1:]:
            size = os.path.getsize(cdir / name)
            assert 1000 <= size < 1000 + 200, (name, size)  # rotated once it reached 1k (one line over)
        lines = eng.docker("logs", cid).stdout.splitlines()
        first = int(lines[0].split("-")[1])
        assert first > 1 and lines == ["line-%d" % i for i in range(first, 301)]  # oldest dropped, rest in order
        # everything kept is read: the three files' lines, oldest file first
        kept = []
        for name in reversed(files):
            with open(cdir / name) as fh:
                kept += [json.loads(line)["log"].rstrip("\n") for line in fh]
        assert kept == lines
        tail = eng.docker("logs", "--tail", "5", cid).stdout.splitlines()
        assert tail == ["line-%d" % i for i in range(296, 301)]
        # a tail longer than the newest file reaches into the rotated ones
        n = len(lines) - 3
        assert eng.docker("logs", "--tail", str(n), cid).stdout.splitlines() == lines[3:]
    finally:
        eng.docker("rm", "-f", cid)


@root_only
def test_max_file_1_starts_afresh_and_follow_crosses_rotations(eng):
    cid = eng.docker(
        "run", "-d", *N, "--log-opt", "max-size=2k", "busybox", "sh", "-c", "for i in $(seq 1 200); do echo l-$i; done"
    ).stdout.strip()
    try:
        eng.docker("wait", cid)
        assert log_files(eng, cid) == [cid + "-json.log"]
        lines = eng.docker("logs", cid).stdout.splitlines()
        assert lines and lines[-1] == "l-200" and len(lines) < 200
    finally:
        eng.docker("rm", "-f", cid)
    # follow: a slow writer rotating every few lines; the follower sees every line once, in order
    script = "i=1; while [ $i -le 150 ]; do echo follow-$i; i=$((i+1)); usleep 10000; done"
    cid = eng.docker(
        "run", "-d", *N, "--log-opt", "max-size=1k", "--log-opt", "max-file=4", "busybox", "sh", "-c", script
    ).stdout.strip()
    try:
        follower = subprocess.Popen(
            ["docker", "logs", "-f", cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=eng.env(), text=True
        )
        out, err = follower.communicate(timeout=60)
        assert out.splitlines() == ["follow-%d" % i for i in range(1, 151)], err
        assert len(log_files(eng, cid)) == 4
    finally:
        eng.docker("rm", "-f", cid)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@root_only
def test_logs_of_a_big_log_are_streamed_not_loaded(eng):
    # 64,000 lines of 1,000 characters: a 68 MB json-file log written by the container itself.
    script = (
        "line=$(printf %0999d 0); i=0; while [ $i -lt 64 ]; do "
        "j=0; while [ $j -lt 1000 ]; do echo $line; j=$((j+1)); done; i=$((i+1)); done"
    )
    cid = eng.docker("run", "-d", *N, "busybox", "sh", "-c", script).stdout.strip()
    try:
        assert eng.docker("wait", cid, timeout=300).stdout.strip() == "0"
        log_path = eng.dir / "data" / "containers" / cid / (cid + "-json.log")
        size = os.path.getsize(log_path)
        assert size > 60 * 1000 * 1000
        pid = eng.proc.proc.pid
        baseline = rss_kb(pid)
        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kb(pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            p = subprocess.run(["docker", "logs", cid], capture_output=True, env=eng.env(), timeout=300)
            tail = subprocess.run(
                ["docker", "logs", "--tail", "2", cid], capture_output=True, env=eng.env(), timeout=60
            )
        finally:
            done.set()
            sampler.join()
        assert p.returncode == 0
        assert p.stdout.count(b"\n") == 64000 and len(p.stdout) == 64000 * 1000
        assert tail.stdout == (b"0" * 999 + b"\n") * 2
        growth_mb = (peak[0] - baseline) / 1024
        print(
            "engine RSS %d MB, grew by %.1f MB while serving a %.0f MB log" % (baseline / 1024, growth_mb, size / 1e6)
        )
        assert growth_mb < 16, growth_mb  # far below the file's size: streamed in blocks
    finally:
        eng.docker("rm", "-f", cid)
    assert_alive(eng)


# -- connections: idle floods, thread and fd exhaustion --------------------------------------------
def tls_args(certdir):
    return ["--tlsverify", "--tlscacert", certdir.ca, "--tlscert", certdir.cert, "--tlskey", certdir.key]


def threads_of(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def tls_ping(port, ctx):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    return data
                data += chunk
    finally:
        raw.close()


def test_idle_connection_flood_costs_no_threads_and_real_clients_get_served(start_engine, pki):
    proc = start_engine("-H", "tcp://127.0.0.1:0", *tls_args(pki.server))
    port = proc.tcp_port()
    ctx = client_tls_context(pki.client)
    pid = proc.proc.pid
    idle_threads = threads_of(pid)
    flood = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 3 == 1:
                s.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, never finished
            elif i % 3 == 2:
                s.sendall(b"GET /_ping HTTP/1.1\r\n")  # plain HTTP on the TLS port
            flood.append(s)
        time.sleep(0.5)
        assert proc.proc.poll() is None
        # No thread per idle connection: the flood waits on the daemon's selector.
        print("engine threads: %d idle, %d with 300 idle connections open" % (idle_threads, threads_of(pid)))
        assert threads_of(pid) <= idle_threads + 4, (idle_threads, threads_of(pid))
        for _ in range(3):
            resp = tls_ping(port, ctx)
            assert resp.startswith(b"HTTP/1.1 200 OK") and resp.endswith(b"OK"), resp
        # The oldest waiting connections were closed to make room (at most 128 wait).
        closed = 0
        for s in flood:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        assert closed >= 300 - 128, closed
    finally:
        for s in flood:
            s.close()
    status, _, body = http_get("/_ping", port=port, tls=ctx)
    assert (status, body) == (200, b"OK")
    assert proc.proc.poll() is None


def test_out_of_file_descriptors_refuses_connections_and_survives(start_engine, bundle):
    d = start_engine.dir
    sock_path = str(d / "engine.sock")
    argv = ["prlimit", "--nofile=200:200", sys.executable, str(bundle[0])]
    argv += ["--data-root", str(d / "data"), "--exec-root", str(d / "exec"), "--pidfile", str(d / "engine.pid")]
    argv += ["-H", "unix://" + sock_path]
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    proc = EngineProcess(argv, env=env)
    start_engine.procs.append(proc)
    proc.wait_ready()
    held, refused = [], 0
    try:
        for _ in range(400):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            held.append(s)
            for _attempt in range(50):
                try:
                    s.connect(sock_path)
                    # Headers never finished: each connection holds a thread and a descriptor.
                    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")
                    break
                except BlockingIOError:
                    time.sleep(0.01)  # the backlog is full: give the engine a moment
                except OSError:
                    break  # the engine closed it: refused, as it should be
            else:
                refused += 1
        proc.wait_for_line("out of file descriptors", deadline=10)
        time.sleep(0.5)
        assert proc.proc.poll() is None, proc.stderr
        print("refused at connect: %d of 400" % refused)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    status, _, body = http_get("/_ping", unix=sock_path)
    assert (status, body) == (200, b"OK")
    assert proc.proc.poll() is None


def test_out_of_threads_refuses_connections_and_survives(start_engine, bundle):
    # A 256 MB stack per thread in a 1.5 GB address space: room for a handful of threads only.
    d = start_engine.dir
    sock_path = str(d / "engine.sock")
    argv = ["prlimit", "--stack=268435456", "--as=1500000000", sys.executable, str(bundle[0])]
    argv += ["--data-root", str(d / "data"), "--exec-root", str(d / "exec"), "--pidfile", str(d / "engine.pid")]
    argv += ["-H", "unix://" + sock_path]
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    proc = EngineProcess(argv, env=env)
    start_engine.procs.append(proc)
    proc.wait_ready()
    held = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            held.append(s)
            s.connect(sock_path)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")  # each wants a thread and keeps it
        proc.wait_for_line("can't start new thread", deadline=10)
        time.sleep(0.3)
        assert proc.proc.poll() is None, proc.stderr
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the held connections' threads end once their sockets are closed
        try:
            status, _, body = http_get("/_ping", unix=sock_path)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (status, body) == (200, b"OK")
    assert proc.proc.poll() is None


# -- units: the schema, log options, rotation and the reader (no root) ------------------------------
def test_schema_takes_what_clients_send_and_nothing_of_the_wrong_type():
    from dockyard.engine.api import bodies, schema
    from dockyard.engine.errors import InvalidParameter

    cli = {  # the shape of docker CLI 28's create body: nulls, zeros, fields the engine ignores
        "Hostname": "",
        "AttachStdout": True,
        "ExposedPorts": {"80/tcp": {}},
        "Tty": False,
        "Env": ["K=V"],
        "Cmd": ["sleep", "1000"],
        "Image": "alpine",
        "Volumes": {},
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": {},
        "SomethingNew": {"x": [1, "y"]},
        "HostConfig": {
            "Binds": ["/host:/ctr"],
            "LogConfig": {"Type": "", "Config": {}},
            "NetworkMode": "default",
            "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "ConsoleSize": [40, 120],
            "CapAdd": None,
            "Memory": 67108864,
            "NanoCpus": 500000000,
            "PidsLimit": None,
            "MemorySwappiness": None,
            "OomKillDisable": None,
            "Ulimits": None,
            "BlkioWeightDevice": [],
            "Mounts": [{"Type": "bind", "Source": "/tmp", "Target": "/t", "ReadOnly": True}],
        },
        "NetworkingConfig": {"EndpointsConfig": {"default": {"IPAMConfig": None, "Links": None, "Aliases": None}}},
    }
    schema.check(bodies.CONTAINER_CREATE, cli)
    schema.check(bodies.CONTAINER_CREATE, dict(cli, Cmd="echo hi", HostConfig=None))  # StrSlice; null HostConfig
    bodies.check_resources(cli["HostConfig"], 2)
    for wrong in (
        {"Tty": 1},
        {"Tty": "false"},
        {"HostConfig": {"Memory": True}},
        {"HostConfig": {"Memory": 1.0}},
        {"HostConfig": {"CapAdd": [1]}},
        {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": 8080}]}}},
        {"HostConfig": []},
        {"Env": [None]},
    ):
        with pytest.raises(InvalidParameter) as info:
            schema.check(bodies.CONTAINER_CREATE, wrong)
        assert info.value.message.startswith("invalid JSON: json: cannot unmarshal "), wrong
    schema.check(
        bodies.EXEC_CREATE,
        {
            "User": "",
            "Privileged": False,
            "Tty": True,
            "ConsoleSize": [24, 80],
            "Env": None,
            "Cmd": ["sh"],
            "DetachKeys": "",
        },
    )


@pytest.mark.parametrize(
    "text,size",
    [
        ("1", 1),
        ("1k", 1000),
        ("1kb", 1000),
        ("1KiB", 1000),
        ("10m", 10**7),
        ("1.5g", 1500000000),
        ("2 m", 2 * 10**6),
        ("3b", 3),
    ],
)
def test_max_size_is_parsed_as_docker_does(text, size):
    from dockyard.engine.runtime import logs

    assert logs.from_human_size(text) == size


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"max-size": "-1"}, "invalid size: '-1'"),
        ({"max-size": "k"}, "invalid size: 'k'"),
        ({"max-size": "1q"}, "invalid suffix: 'q'"),
        ({"max-size": "1kbb"}, "invalid suffix: 'kbb'"),
        ({"max-size": "0"}, "max-size must be a positive number"),
        ({"max-size": "1e30g"}, "invalid size: '1e30g'"),
        ({"max-file": "0"}, "max-file cannot be less than 1"),
        ({"max-file": "-3"}, "max-file cannot be less than 1"),
        ({"max-file": "three"}, 'strconv.Atoi: parsing "three": invalid syntax'),
        ({"max-file": "101"}, "max-file cannot be more than 100"),
        ({"compress": "true"}, "compress is not supported"),
        ({"mode": "non-blocking"}, "unknown log opt 'mode' for json-file log driver"),
    ],
)
def test_bad_log_opts(opts, message):
    from dockyard.engine.errors import InvalidParameter
    from dockyard.engine.runtime import logs

    with pytest.raises(InvalidParameter) as info:
        logs.parse_log_opts(opts)
    assert info.value.message.startswith(message)


def test_rotation_and_reading_across_rotated_files(tmp_path):
    from dockyard.engine.runtime import logs

    path = str(tmp_path / "c-json.log")
    limits = logs.parse_log_opts({"max-size": "1k", "max-file": "3"})
    writer = logs.JsonLogWriter(path, limits)
    follower = logs.LogReader(path)
    seen = [e.data for e in follower.entries()]
    for i in range(1, 301):
        writer.write("stdout", b"line-%d\n" % i)
        if i % 7 == 0:  # the follower polls now and then: several rotations happen in between
            seen += [e.data for e in follower.entries()]
    writer.close()
    seen += [e.data for e in follower.entries()]
    assert seen == [b"line-%d\n" % i for i in range(1, 301)]  # every line once, in order, across rotations
    names = sorted(os.listdir(tmp_path))
    assert names == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    for name in names[1:]:
        assert 1000 <= os.path.getsize(tmp_path / name) < 1100
    kept = [e.data for e in logs.LogReader(path).entries()]
    first = int(kept[0][5:])
    assert kept == [b"line-%d\n" % i for i in range(first, 301)]
    assert [e.data for e in logs.LogReader(path, tail=3).entries()] == [b"line-298\n", b"line-299\n", b"line-300\n"]
    assert [e.data for e in logs.LogReader(path, tail=len(kept) - 1).entries()] == kept[1:]
    assert [e.data for e in logs.LogReader(path, tail=10**6).entries()] == kept
    assert list(logs.LogReader(path, tail=0).entries()) == []
    # Reopened (a restarted container): the size already written counts.
    again = logs.JsonLogWriter(path, limits)
    again.write("stderr", b"x" * 2000 + b"\n")
    again.write("stderr", b"after\n")
    again.close()
    assert [e.data for e in logs.LogReader(path, tail=1).entries()] == [b"after\n"]
    assert sorted(os.listdir(tmp_path)) == names


def test_max_file_1_replaces_the_file(tmp_path):
    from dockyard.engine.runtime import logs

    path = str(tmp_path / "c-json.log")
    writer = logs.JsonLogWriter(path, logs.parse_log_opts({"max-size": "500"}))
    follower = logs.LogReader(path)
    got = []
    for i in range(100):
        writer.write("stdout", b"n%d\n" % i)
        got += [e.data for e in follower.entries()]
    writer.close()
    assert os.listdir(tmp_path) == ["c-json.log"] and os.path.getsize(path) < 600
    assert got == [b"n%d\n" % i for i in range(100)]


@root_only
def test_attach_with_logs_streams_the_log_up_to_now(eng):
    cid = eng.docker(
        "run", "-d", *N, "busybox", "sh", "-c", "echo one; usleep 200000; echo two >&2; sleep 600"
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while eng.docker("logs", cid).stderr != "two\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(eng.sock)
        s.sendall(
            b"POST /containers/%s/attach?logs=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n" % cid.encode()
        )
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, frames = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 UPGRADED")
        assert frames == b"\x01\x00\x00\x00\x00\x00\x00\x04one\n" + b"\x02\x00\x00\x00\x00\x00\x00\x04two\n"
    finally:
        eng.docker("rm", "-f", cid)
