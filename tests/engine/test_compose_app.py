"""Debian's docker-compose 1.29 (the Python one) runs a three-service app against the engine, end to end:
a web front built from a Dockerfile (FROM the Debian+python3 test image), a key-value store it reaches by
service name (its data in a named volume), a one-shot job; a published port, depends_on with health
conditions, environment, health checks. Compose talks to the engine through a recording proxy, so the
test also reports which endpoints it used and fails on any route the engine did not know (404 "page not
found", 405, 501).

The engine runs in its own network namespace (tests/engine/runtime_helper.py); published ports are
reached from inside that namespace."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.engine import images_helper
from tests.engine.runtime_helper import RuntimeEngine
from tests.images import busybox_tar, cache_dir

APP_MARKS = (
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("docker"), reason="needs root and the docker CLI"),
    pytest.mark.skipif(not shutil.which("docker-compose"), reason="needs docker-compose (Debian's, 1.29)"),
    pytest.mark.skipif(
        not shutil.which("mmdebstrap") and not list(cache_dir().glob("python-*.tar")),
        reason="needs the python test image (mmdebstrap or a cached build)",
    ),
)


def needs_the_app(test):
    for mark in APP_MARKS:
        test = mark(test)
    return test


images_engine = images_helper.images_engine  # the fixture, used by name below

APP = Path(__file__).parent / "data" / "compose_app"
PROJECT = "cmpapp"
REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (/[^ ]*) HTTP/1\.[01]\r\n")
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
UNROUTED = 0  # recorded instead of 404 when the engine had no route for the request


class RecordingProxy:
    """A unix socket in front of the engine's: copies bytes both ways and records, per connection,
    the request lines the client sent and the status lines the engine answered (in order, so the
    n-th request pairs with the n-th status; a hijacked stream stops the parsing)."""

    def __init__(self, path: str, engine_sock: str):
        self.path = path
        self.engine_sock = engine_sock
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.engine_sock)
        state = {"requests": [], "statuses": [], "hijacked": False, "up": b"", "down": b""}

        def pump(src, dst, key):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if not state["hijacked"]:
                        self._parse(state, key, data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(upstream, client, "down"), daemon=True)
        t.start()
        pump(client, upstream, "up")
        t.join(timeout=600)
        client.close()
        upstream.close()

    def _parse(self, state, key, data):
        state[key] = (state[key] + data)[-65536:]
        pattern = REQUEST if key == "up" else STATUS
        found = list(pattern.finditer(state[key]))
        if not found:
            return
        state[key] = state[key][found[-1].end() :]
        with self.lock:
            if key == "up":
                state["requests"] += [(m.group(1).decode(), m.group(2).decode()) for m in found]
            else:
                for m in found:
                    status = int(m.group(1))
                    if status == 404 and b"page not found" in data:
                        status = UNROUTED  # no such route, not a missing object
                    if state["requests"]:
                        method, path = state["requests"].pop(0)
                        self.calls.append((method, path, status))
                    if status == 101 or b"application/vnd.docker.raw-stream" in data or b"multiplexed" in data:
                        state["hijacked"] = True

    def endpoints(self) -> dict[str, set[int]]:
        """{"METHOD /path/with/{id}": {statuses}}: ids, names and query strings folded away."""
        out: dict[str, set[int]] = {}
        with self.lock:
            for method, path, status in self.calls:
                path = re.sub(r"^/v1\.\d+", "", path.split("?")[0])
                parts = path.split("/")
                if len(parts) > 2 and parts[1] in ("containers", "exec", "networks", "volumes", "images"):
                    if parts[2] not in ("json", "create", "prune", "build", "load", "search", "get"):
                        parts[2] = "{id}"
                        if parts[1] == "images":
                            parts[3:] = [p for p in parts[3:] if p in ("json", "tag", "push", "history")][-1:]
                out.setdefault(method + " " + "/".join(parts), set()).add(status)
        return out

    def close(self):
        self.server.close()


@pytest.fixture(scope="module")
def eng():
    pytest.importorskip("pyroute2")
    e = RuntimeEngine()
    try:
        e.start()
        # a fresh namespace's lo is down: the published ports are reached through it
        subprocess.run(["nsenter", "-t", str(e.proc.proc.pid), "-n", "ip", "link", "set", "lo", "up"], check=True)
        from tests.images import python_tar

        e.docker("load", "-i", str(python_tar()), timeout=600)
        yield e
    finally:
        e.cleanup()


@pytest.fixture(scope="module")
def proxy(eng):
    p = RecordingProxy(str(eng.dir / "compose.sock"), eng.sock)
    yield p
    p.close()


@pytest.fixture(scope="module")
def project(eng, tmp_path_factory):
    work = tmp_path_factory.mktemp("compose_app")
    for f in APP.iterdir():
        shutil.copy(f, work / f.name)
    return work


def compose_env(eng, proxy):
    env = eng.env()
    env["DOCKER_HOST"] = "unix://" + proxy.path
    env["COMPOSE_PROJECT_NAME"] = PROJECT
    env["COMPOSE_HTTP_TIMEOUT"] = "120"
    return env


def in_engine_netns(eng, *argv, timeout=30):
    return subprocess.run(
        ["nsenter", "-t", str(eng.proc.proc.pid), "-n", *argv], capture_output=True, text=True, timeout=timeout
    )


def http_get(eng, port, path):
    code = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=10).read().decode())"
    p = in_engine_netns(eng, "python3", "-c", code, "http://127.0.0.1:%d%s" % (port, path))
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def health(eng, names):
    out = eng.docker(
        "inspect", "-f", "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", *names
    ).stdout
    return {line.split()[0].lstrip("/"): line.split()[1:] for line in out.splitlines()}


def wait_healthy(eng, names, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        states = health(eng, names)
        if all(s == ["running", "healthy"] for s in states.values()):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


@pytest.mark.parametrize(
    "version, agent, present",
    [
        ("1.50", "docker-sdk-python/7.1.0", False),  # Docker's shape since API 1.44
        ("1.41", "docker-sdk-python/7.1.0", True),
        ("1.50", "docker-compose/1.29.2 docker-py/5.0.3 Linux/6.1.0", True),
    ],
)
def test_image_inspect_keeps_container_config_for_docker_compose_1(images_engine, version, agent, present):
    """docker-compose 1.29 negotiates the newest API version, then reads the image's ContainerConfig (which
    API 1.44 dropped) whenever it recreates a container: it gets one, other new clients do not."""
    import docker

    images_engine.docker("load", "-i", str(busybox_tar()))
    api = docker.APIClient(base_url="unix://" + images_engine.socket_path, version=version, user_agent=agent)
    info = api.inspect_image("busybox")
    assert ("ContainerConfig" in info) is present
    if present:
        assert info["ContainerConfig"]["Volumes"] is None and "Cmd" in info["ContainerConfig"]


@needs_the_app
def test_ulimits_apply_to_the_container_and_its_execs(eng):
    """HostConfig.Ulimits was validated and stored, then not applied: the process kept the engine's."""
    code = "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE), *resource.getrlimit(resource.RLIMIT_NPROC))"
    d = eng.docker
    out = d("run", "--rm", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=100:200", "pyweb", "python3", "-c", code)
    assert out.stdout.split() == ["1024", "2048", "100", "200"]
    d("run", "-d", "--name", "limited", "--ulimit", "nofile=512:4096", "pyweb", "sleep", "300")
    try:
        assert d("exec", "limited", "python3", "-c", code).stdout.split()[:2] == ["512", "4096"]
        assert d("exec", "-u", "65534", "limited", "python3", "-c", code).stdout.split()[:2] == ["512", "4096"]
    finally:
        d("rm", "-f", "limited")


@needs_the_app
def test_compose_app_end_to_end(eng, proxy, project):
    env = compose_env(eng, proxy)

    def compose(*args, check=True, timeout=300):
        p = subprocess.run(
            ["docker-compose", *args], cwd=project, capture_output=True, text=True, env=env, timeout=timeout
        )
        if check:
            assert p.returncode == 0, (
                f"docker-compose {' '.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}\n" + (eng.proc.stderr[-3000:])
            )
        return p

    try:
        # up -d --build: builds the image (once per service, the later ones from the cache), starts kv,
        # waits for it to be healthy, starts web, waits again, then the job.
        t0 = time.monotonic()
        up = compose("up", "-d", "--build")
        wait_healthy(eng, [f"{PROJECT}_kv_1", f"{PROJECT}_web_1"])
        up_seconds = time.monotonic() - t0
        assert "Successfully built" in up.stdout + up.stderr

        ps = compose("ps").stdout
        assert re.search(rf"{PROJECT}_kv_1 .*Up \(healthy\)", ps), ps
        assert re.search(rf"{PROJECT}_web_1 .*Up \(healthy\).*0\.0\.0\.0:\d+->8000/tcp", ps), ps

        # the published port, from the engine's namespace; web counts in kv by service name
        port = int(compose("port", "web", "8000").stdout.strip().rsplit(":", 1)[1])
        first = http_get(eng, port, "/hit").split()
        assert first[0] == "front" and int(first[2]) >= 1

        # the one-shot job ran once and exited 0
        job = eng.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", f"{PROJECT}_job_1").stdout.split()
        assert job == ["exited", "0"]
        assert "job run 1: nightly front" in compose("logs", "--no-color", "job").stdout

        # logs -f: follows until stopped (bounded: we stop reading once a fresh request shows up)
        follow = subprocess.Popen(
            ["docker-compose", "logs", "-f", "--no-color", "web"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            http_get(eng, port, "/get/hits")
            seen = []
            deadline = time.monotonic() + 30
            for line in follow.stdout:
                seen.append(line)
                if "GET /get/hits" in line:
                    break
                assert time.monotonic() < deadline, seen
            assert any("listening on 8000, kv at kv" in line for line in seen), seen
        finally:
            follow.kill()
            follow.wait()

        # exec into the running web container: its environment, and kv by name
        out = compose(
            "exec",
            "-T",
            "web",
            "python3",
            "-c",
            "import os,socket;print(os.environ['KV_HOST'], socket.gethostbyname('kv'))",
        ).stdout.split()
        assert out[0] == "kv" and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", out[1])

        # the kv service's ulimits hold for its process and for an exec in it
        code = "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
        assert compose("exec", "-T", "kv", "python3", "-c", code).stdout.split() == ["1024", "2048"]
        limits = compose("exec", "-T", "kv", "cat", "/proc/1/limits").stdout
        assert re.search(r"Max open files +1024 +2048 ", limits), limits

        # exec with a terminal (compose hands it to the docker CLI): a tty inside, the exit code comes back
        code = "import sys; print(sys.stdin.isatty(), sys.stdout.isatty()); sys.exit(3)"
        tty = subprocess.run(
            ["script", "-qec", f'docker-compose exec web python3 -c "{code}"', "/dev/null"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert tty.returncode == 3 and "True True" in tty.stdout, (tty.returncode, tty.stdout, tty.stderr)

        # run --rm: a second job run, its container gone afterwards
        run = compose("run", "--rm", "-T", "job")
        assert "job run 2: nightly front" in run.stdout, run.stdout + run.stderr
        names = eng.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert not [n for n in names if n.startswith(f"{PROJECT}_job_run")], names

        # scale web to 3: each has its own host port and counts in the same store
        compose("up", "-d", "--scale", "web=3")
        webs = [f"{PROJECT}_web_{i}" for i in (1, 2, 3)]
        wait_healthy(eng, webs)
        ports = set()
        for i in (1, 2, 3):
            ports.add(int(compose("port", "--index", str(i), "web", "8000").stdout.strip().rsplit(":", 1)[1]))
        assert len(ports) == 3
        hosts = set()
        for p in sorted(ports):
            name, host, _ = http_get(eng, p, "/hit").split()
            hosts.add(host)
        assert len(hosts) == 3
        hits = int(http_get(eng, port, "/get/hits"))

        # restart: same containers, the store's data survives (it is on the named volume)
        compose("restart", "kv", "web")  # not the job: restarting it would run it again
        wait_healthy(eng, [f"{PROJECT}_kv_1", *webs])
        # an unfixed host port is picked again at each start, as dockerd does
        port = int(compose("port", "web", "8000").stdout.strip().rsplit(":", 1)[1])
        assert int(http_get(eng, port, "/get/hits")) == hits

        # change the code, `up -d --build` again: images rebuilt, every container recreated (compose renames
        # the old one, reads its image's ContainerConfig, creates the new one), web back to one replica,
        # the job run once more; the store keeps its data on the named volume
        app = project / "app.py"
        app.write_text(app.read_text().replace('"%s %s %s" % (NAME,', '"%s-v2 %s %s" % (NAME,'))
        old_kv = eng.docker("inspect", "-f", "{{.Id}}", f"{PROJECT}_kv_1").stdout.strip()
        compose("up", "-d", "--build")
        wait_healthy(eng, [f"{PROJECT}_kv_1", f"{PROJECT}_web_1"])
        assert eng.docker("inspect", "-f", "{{.Id}}", f"{PROJECT}_kv_1").stdout.strip() != old_kv
        labels = f"label=com.docker.compose.project={PROJECT}"
        web_ids = eng.docker("ps", "-q", "--filter", labels, "--filter", "label=com.docker.compose.service=web").stdout
        assert len(web_ids.split()) == 1
        port = int(compose("port", "web", "8000").stdout.strip().rsplit(":", 1)[1])
        name, _, count = http_get(eng, port, "/hit").split()
        assert name == "front-v2" and int(count) > hits

        # stop: everything stopped, nothing removed
        t0 = time.monotonic()
        compose("stop")
        stop_seconds = time.monotonic() - t0
        states = health(eng, [f"{PROJECT}_kv_1", f"{PROJECT}_web_1"])
        assert all(s[0] == "exited" for s in states.values()), states

        # up -d again: the stopped containers start as they are; then down -v below stops a running app
        t0 = time.monotonic()
        compose("up", "-d", "--no-build")
        wait_healthy(eng, [f"{PROJECT}_kv_1", f"{PROJECT}_web_1"])
        restart_seconds = time.monotonic() - t0
    finally:
        t_down = time.monotonic()
        compose("down", "-v", check=False)
    down_seconds = time.monotonic() - t_down
    assert not eng.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.strip()
    assert f"{PROJECT}_default" not in eng.docker("network", "ls", "--format", "{{.Name}}").stdout
    assert f"{PROJECT}_kvdata" not in eng.docker("volume", "ls", "--format", "{{.Name}}").stdout

    endpoints = proxy.endpoints()
    print(
        f"\ncompose up -d --build to all healthy: {up_seconds:.1f}s; stop: {stop_seconds:.1f}s;"
        f" up -d of the stopped app to healthy: {restart_seconds:.1f}s; down -v: {down_seconds:.1f}s"
    )
    print("endpoints docker-compose used:")
    for ep in sorted(endpoints):
        print("  %-50s %s" % (ep, sorted(endpoints[ep])))
    # 404 for a missing network or volume is how compose asks whether it exists; an unknown route is not
    unknown = {ep: s for ep, s in endpoints.items() if s & {UNROUTED, 405, 501}}
    assert not unknown, unknown
    assert "POST /build" in endpoints and "POST /exec/{id}/start" in endpoints  # the proxy saw the traffic
