"""Compatibility defects found driving the engine with docker-py (issue 10), each against a real engine
(its own network and mount namespace, tests/engine/runtime_helper.py) with the real docker CLI and docker-py."""

from __future__ import annotations

import json
import os

import pytest

from dockyard.engine.api import distribution
from dockyard.engine.api.containers import parse_until
from dockyard.engine.errors import InvalidParameter
from tests.engine import images_helper
from tests.engine.runtime_helper import RuntimeEngine
from tests.engine.test_images_pull import REGISTRY, busybox_parts, push
from tests.engine.test_images_pull import registry as registry  # the fixture, used by name below

images_engine = images_helper.images_engine  # fixtures, used by name below

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

NOT_A_MANAGER = 'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join"'


def test_swarm_endpoints_answer_as_dockerd_outside_a_swarm(eng):
    import docker

    client = eng.client()
    api = client.api
    assert api.leave_swarm(force=True) is True  # docker-py takes dockerd's 503 as "not in a swarm"
    with pytest.raises(docker.errors.APIError) as info:
        api.leave_swarm(force=False)
    assert info.value.response.status_code == 503 and "not part of a swarm" in str(info.value)
    for path in ("/swarm", "/nodes", "/services", "/tasks", "/secrets", "/configs", "/nodes/x", "/services/x"):
        resp = api._get(api._url(path))
        assert resp.status_code == 503, path
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json()["message"].startswith(NOT_A_MANAGER), path
    p = eng.docker("node", "ls", check=False)
    assert p.returncode != 0 and "This node is not a swarm manager" in p.stderr
    p = eng.docker("service", "ls", check=False)
    assert p.returncode != 0 and "This node is not a swarm manager" in p.stderr
    assert client.info()["Swarm"]["LocalNodeState"] == "inactive"
    assert client.ping() is True  # the engine still answers


def test_missing_command_on_the_bridge_is_dockers_error_not_a_proc_race(eng):
    """Default network (bridge, so the engine wires the netns while the init looks the command up)."""
    import docker

    for _ in range(5):  # the init's failure and the network hook used to race
        p = eng.docker("run", "--rm", "busybox", "nonexistent-cmd", check=False)
        assert p.returncode == 127, p.stderr
        assert 'exec: "nonexistent-cmd": executable file not found in $PATH' in p.stderr
        assert "/proc/" not in p.stderr
    p = eng.docker("run", "--rm", "busybox", "/etc", check=False)
    assert p.returncode == 126 and "/proc/" not in p.stderr, p.stderr
    client = eng.client()
    with pytest.raises(docker.errors.APIError) as info:
        client.containers.run("busybox", "nonexistent-cmd", name="nocmd")
    assert info.value.response.status_code == 400
    assert "executable file not found" in str(info.value)
    c = client.containers.get("nocmd")
    assert c.attrs["State"]["ExitCode"] == 127 and c.status in ("created", "exited")
    c.remove()
    # a command that exits at once runs and exits normally
    assert client.containers.run("busybox", ["sh", "-c", "exit 0"], remove=True) == b""
    assert eng.docker("ps", "-aq").stdout == ""
    # the bridge's addresses were given back: a later container still starts and gets one
    out = eng.docker("run", "--rm", "busybox", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "inet 172." in out or "inet 10." in out


def test_exec_output_framing_tty_and_demux(eng):
    client = eng.client()
    c = client.containers.run("busybox", ["sleep", "60"], detach=True, network_mode="none")
    try:
        script = ["sh", "-c", "echo out; echo err >&2"]
        r = c.exec_run(script)
        assert r.exit_code == 0 and sorted(r.output.splitlines()) == [b"err", b"out"] and b"\r" not in r.output
        r = c.exec_run(script, demux=True)
        assert r.output == (b"out\n", b"err\n")
        r = c.exec_run(script, tty=True)
        assert r.output == b"out\r\nerr\r\n"
        r = c.exec_run(script, tty=True, demux=True)
        assert r.output == (b"out\r\nerr\r\n", None)
        # the raw API: multiplexed frames (stream 1 / 2) without tty, one raw stream with it
        api = client.api
        ex = api.exec_create(c.id, script)
        raw = api.exec_start(ex["Id"], socket=False, stream=False, demux=False)
        assert raw in (b"out\nerr\n", b"err\nout\n")
        p = eng.docker("exec", c.id, "sh", "-c", "echo out; echo err >&2")
        assert (p.stdout, p.stderr) == ("out\n", "err\n")
    finally:
        c.remove(force=True)


def test_container_prune_filters(eng):
    d = eng.docker
    d("create", "--name", "keep", "--label", "keep=yes", "busybox", "true")
    d("create", "--name", "drop1", "--label", "team=a", "busybox", "true")
    d("create", "--name", "drop2", "--label", "team=b", "busybox", "true")
    try:
        out = d("container", "prune", "-f", "--filter", "label=team=a").stdout
        names = set(d("ps", "-a", "--format", "{{.Names}}").stdout.split())
        assert names == {"keep", "drop2"}, out
        d("container", "prune", "-f", "--filter", "label!=keep")
        assert set(d("ps", "-a", "--format", "{{.Names}}").stdout.split()) == {"keep"}
        # until: nothing created before an hour ago
        d("container", "prune", "-f", "--filter", "until=1h")
        assert set(d("ps", "-a", "--format", "{{.Names}}").stdout.split()) == {"keep"}
        client = eng.client()
        res = client.containers.prune(filters={"label": ["keep=no"]})
        assert not res.get("ContainersDeleted")
        p = d("container", "prune", "-f", "--filter", "until=yesterday-ish", check=False)
        assert p.returncode != 0 and "failed to parse value" in p.stderr
        assert set(d("ps", "-a", "--format", "{{.Names}}").stdout.split()) == {"keep"}
        res = client.containers.prune(filters={"label": "keep=yes"})
        assert len(res["ContainersDeleted"]) == 1
    finally:
        d("rm", "-f", "keep", "drop1", "drop2", check=False)


def test_parse_until():
    now = 1_700_000_000 * 10**9
    assert parse_until("1h", now) == now - 3600 * 10**9
    assert parse_until("1h30m", now) == now - 5400 * 10**9
    assert parse_until("1500ms", now) == now - 1_500_000_000
    assert parse_until("1700000000", now) == now
    assert parse_until("1700000000.5", now) == now + 500_000_000
    assert parse_until("2023-11-14T22:13:20Z", now) == now
    assert parse_until("2023-11-14", now) == 1_699_920_000 * 10**9
    for bad in ("", "h", "1d", "soon", "2023-13-01"):
        with pytest.raises(InvalidParameter):
            parse_until(bad, now)


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_cp_through_volumes_and_bind_mounts_both_ways(eng, tmp_path, running):
    d = eng.docker
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "b.txt").write_text("bindfile\n")
    (tmp_path / "in.txt").write_text("hostfile\n")
    vol = "cpvol-" + ("r" if running else "s")
    name = "cpc-" + ("r" if running else "s")
    script = "echo volfile > /data/v.txt; ln -s /etc/shadow /data/evil; ln -s / /data/up; sleep 300"
    d(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        vol + ":/data",
        "-v",
        f"{bind}:/bnd",
        "-v",
        vol + ":/ro:ro",
        "busybox",
        "sh",
        "-c",
        script,
    )
    try:
        for _ in range(50):
            if d("exec", name, "test", "-L", "/data/up", check=False).returncode == 0:
                break
        if not running:
            d("stop", "-t", "0", name)
        out = tmp_path / "out"
        out.mkdir()
        d("cp", f"{name}:/data/v.txt", str(out / "v.txt"))
        assert (out / "v.txt").read_text() == "volfile\n"
        d("cp", f"{name}:/bnd/b.txt", str(out / "b.txt"))
        assert (out / "b.txt").read_text() == "bindfile\n"
        d("cp", f"{name}:/data", str(out / "datadir"))
        assert sorted(os.listdir(out / "datadir")) == ["evil", "up", "v.txt"]
        assert os.readlink(out / "datadir" / "evil") == "/etc/shadow"  # the link itself, never the host's file
        d("cp", str(tmp_path / "in.txt"), f"{name}:/data/in.txt")
        d("cp", str(tmp_path / "in.txt"), f"{name}:/bnd/in.txt")
        assert (bind / "in.txt").read_text() == "hostfile\n"
        # links in the volume do not lead out of it (stopped: they resolve inside the volume)
        p = d("cp", f"{name}:/data/evil", str(out / "evil2"), check=False)
        assert not (out / "evil2").exists() or os.path.islink(out / "evil2")
        p = d("cp", str(tmp_path / "in.txt"), f"{name}:/data/up/etc/", check=False)
        host_etc_in = os.path.exists("/etc/in.txt")
        assert not host_etc_in
        # a read-only mount takes nothing
        p = d("cp", str(tmp_path / "in.txt"), f"{name}:/ro/x.txt", check=False)
        assert p.returncode != 0 and "read-only" in p.stderr
        client = eng.client()
        ctr = client.containers.get(name)
        bits, stat = ctr.get_archive("/data/in.txt")
        assert stat["name"] == "in.txt" and stat["size"] == len("hostfile\n")
        assert b"hostfile" in b"".join(bits)
        assert ctr.put_archive("/bnd", _tar({"py.txt": b"from docker-py\n"}))
        assert (bind / "py.txt").read_text() == "from docker-py\n"
        check = d("run", "--rm", "--network", "none", "-v", vol + ":/x", "busybox", "cat", "/x/in.txt").stdout
        assert check == "hostfile\n"
        assert not os.path.exists("/ro") and not os.path.exists("/data/in.txt")
    finally:
        d("rm", "-f", name, check=False)
        d("volume", "rm", vol, check=False)


def _tar(files):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_log_drivers_none_local_json_file(eng):
    import docker

    d = eng.docker
    fmt = "{{.HostConfig.LogConfig.Type}}"
    d("run", "--name", "lnone", "--log-driver", "none", "--network", "none", "busybox", "echo", "quiet")
    d(
        "run",
        "--name",
        "llocal",
        "--log-driver",
        "local",
        "--log-opt",
        "max-size=1k",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "for i in $(seq 1 200); do echo line-$i; done",
    )
    d("run", "--name", "ljson", "--network", "none", "busybox", "echo", "json")
    try:
        assert d("inspect", "-f", fmt, "lnone").stdout.strip() == "none"
        p = d("logs", "lnone", check=False)
        assert p.returncode != 0 and "configured logging driver does not support reading" in p.stderr
        log_path = d("inspect", "-f", "{{.LogPath}}", "lnone").stdout.strip()
        assert not os.path.exists(log_path) or os.path.getsize(log_path) == 0
        # attached output still arrives with the none driver
        p = d("run", "--rm", "--log-driver", "none", "--network", "none", "busybox", "echo", "attached")
        assert p.stdout == "attached\n"
        assert d("inspect", "-f", fmt, "llocal").stdout.strip() == "local"
        out = d("logs", "llocal").stdout.splitlines()
        assert out[-1] == "line-200" and len(out) < 200  # rotated at 1k, the last lines kept
        assert d("inspect", "-f", fmt, "ljson").stdout.strip() == "json-file"
        assert d("logs", "ljson").stdout == "json\n"
        p = d("run", "--rm", "--log-driver", "syslog", "busybox", "true", check=False)
        assert p.returncode != 0 and 'logging driver "syslog" is not supported by dockyard' in p.stderr
        p = d("run", "--rm", "--log-driver", "nosuch", "busybox", "true", check=False)
        assert p.returncode != 0 and "logger: no log driver named 'nosuch' is registered" in p.stderr
        p = d("run", "--rm", "--log-driver", "local", "--log-opt", "labels=x", "busybox", "true", check=False)
        assert p.returncode != 0 and "unknown log opt 'labels' for local log driver" in p.stderr
        client = eng.client()
        cfg = docker.types.LogConfig(type="none")
        assert client.containers.run("busybox", "echo hi", log_config=cfg, network_mode="none", remove=True) is None
        ctr = client.containers.run("busybox", "echo hi", log_config={"type": "local"}, detach=True)
        assert ctr.wait()["StatusCode"] == 0 and ctr.logs() == b"hi\n"
        ctr.remove()
    finally:
        d("rm", "-f", "lnone", "llocal", "ljson", check=False)


class DefaultNoneEngine(RuntimeEngine):
    def argv(self):
        return super().argv() + ["--opt", "log-driver=none"]


def test_engine_default_log_driver():
    e = DefaultNoneEngine()
    try:
        e.start()
        e.load_busybox()
        e.docker("create", "--name", "dflt", "busybox", "true")
        assert e.docker("inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "dflt").stdout.strip() == "none"
        e.docker("create", "--name", "explicit", "--log-driver", "json-file", "busybox", "true")
        assert e.docker("inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "explicit").stdout.strip() == "json-file"
    finally:
        e.cleanup()


def test_legacy_links(eng):
    d = eng.docker
    d("run", "-d", "--name", "ldb", "-e", "SECRET=s3", "--expose", "5432", "busybox", "sleep", "300")
    d("network", "create", "--subnet", "10.77.0.0/24", "linknet")
    d("run", "-d", "--name", "ldb2", "--network", "linknet", "busybox", "sleep", "300")
    try:
        ip = d("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "ldb").stdout.strip()
        script = "cat /etc/hosts; env | sort; ping -c 1 -W 2 pg >/dev/null && echo PING-OK"
        out = d("run", "--rm", "--name", "lweb", "--link", "ldb:pg", "busybox", "sh", "-c", script).stdout
        assert f"{ip}\tpg" in out and f"{ip}\tldb" in out and "PING-OK" in out
        for line in (
            "PG_NAME=/lweb/pg",
            f"PG_PORT=tcp://{ip}:5432",
            f"PG_PORT_5432_TCP=tcp://{ip}:5432",
            f"PG_PORT_5432_TCP_ADDR={ip}",
            "PG_PORT_5432_TCP_PORT=5432",
            "PG_PORT_5432_TCP_PROTO=tcp",
            "PG_ENV_SECRET=s3",
        ):
            assert line in out.splitlines(), line
        # exec gets them too, as in Docker
        d("run", "-d", "--name", "lweb2", "--link", "ldb", "busybox", "sleep", "300")
        assert "LDB_ENV_SECRET=s3" in d("exec", "lweb2", "env").stdout
        # docker-py: links={"ldb": "alias"}
        client = eng.client()
        out = client.containers.run("busybox", ["sh", "-c", "echo $DB_PORT"], links={"ldb": "db"}, remove=True)
        assert out == f"tcp://{ip}:5432\n".encode()
        # errors as dockerd words them
        p = d("run", "--rm", "--link", "nosuch:x", "busybox", "true", check=False)
        assert p.returncode == 125 and "could not get container for nosuch" in p.stderr
        # a user-defined network: the link is a DNS name for this container only
        out = d("run", "--rm", "--network", "linknet", "--link", "ldb2:store", "busybox", "nslookup", "store").stdout
        assert (
            d("inspect", "-f", '{{(index .NetworkSettings.Networks "linknet").IPAddress}}', "ldb2").stdout.strip()
            in out
        )
        p = d("run", "--rm", "--network", "linknet", "busybox", "nslookup", "store", check=False)
        assert p.returncode != 0
        # docker rm --link
        d("create", "--name", "lweb3", "--link", "ldb:pg", "busybox", "true")
        d("rm", "--link", "/lweb3/pg")
        assert d("inspect", "-f", "{{json .HostConfig.Links}}", "lweb3").stdout.strip() == "null"
        p = d("rm", "--link", "/lweb3/zz", check=False)
        assert p.returncode != 0 and "No such link" in p.stderr
        d("stop", "-t", "0", "ldb")
        p = d("run", "--rm", "--link", "ldb:pg", "busybox", "true", check=False)
        assert p.returncode == 125 and "Cannot link to a non running container: /ldb AS" in p.stderr
    finally:
        d("rm", "-f", "ldb", "ldb2", "lweb2", "lweb3", check=False)
        d("network", "rm", "linknet", check=False)


@pytest.mark.skipif(REGISTRY is None, reason="needs docker-registry (apt-get install docker-registry)")
def test_distribution_inspect(images_engine, registry, monkeypatch):
    import docker

    host = registry
    # the images tests' engine serves a few resource modules only: add this one to its router
    distribution.register(images_engine.server.app, images_engine.engine)
    config, layers = busybox_parts()
    manifest_digest = push(host, "team/busybox", "1.0", config, layers)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    client = images_engine.client()
    data = client.images.get_registry_data(f"{host}/team/busybox:1.0")
    assert data.id == manifest_digest
    assert data.attrs["Descriptor"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    arch = json.loads(config)["architecture"]
    assert data.attrs["Platforms"] == [{"architecture": arch, "os": "linux"}]
    assert data.has_platform("linux/" + arch)
    by_digest = client.images.get_registry_data(f"{host}/team/busybox@{manifest_digest}")
    assert by_digest.id == manifest_digest
    with pytest.raises(docker.errors.APIError):
        client.images.get_registry_data(f"{host}/team/busybox:nosuchtag")
    # the engine's pull policy: other registries are not contacted
    with pytest.raises(docker.errors.NotFound) as info:
        client.images.get_registry_data("registry.invalid/x/y:1")
    assert "only reaches local registries" in str(info.value)
    assert client.ping()
