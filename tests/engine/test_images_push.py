"""`docker push` and `docker login` against Debian's docker-registry (distribution 2.8) on 127.0.0.1.

The engine serves in this process (images_helper), so the upload thresholds can be lowered to force
chunked uploads. Registries with basic auth use an htpasswd file (bcrypt, as distribution requires).
"""

import base64
import hashlib
import http.client
import http.server
import json
import os
import subprocess
import threading
import time

import pytest

from dockyard.engine.images import push as pushmod
from tests.engine import images_helper
from tests.engine.test_images_pull import (
    REGISTRY,
    busybox_parts,
    free_port,
    registry,  # noqa: F401  (the fixture, used by name)
)
from tests.engine.test_images_pull import push as api_push
from tests.images import busybox_image_id, busybox_tar

images_engine = images_helper.images_engine  # the fixture, used by name below

pytestmark = pytest.mark.skipif(REGISTRY is None, reason="needs docker-registry (apt-get install docker-registry)")

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI = "application/vnd.oci.image.manifest.v1+json"


def _get(host, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def _manifest(host, repo, ref, auth=None):
    headers = {"Accept": ", ".join([SCHEMA2, OCI])}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    status, _, body = _get(host, f"/v2/{repo}/manifests/{ref}", headers)
    assert status == 200, body
    return body


def _start_registry(tmp_path, extra=""):
    port = free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/reg\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra}"
    )
    proc = subprocess.Popen([REGISTRY, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20  # only bounds a hang
    while True:
        try:
            if _get(f"127.0.0.1:{port}", "/v2/")[0] in (200, 401):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("docker-registry did not start: %s" % proc.stderr.read().decode())
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture
def auth_registry(tmp_path):
    bcrypt = pytest.importorskip("bcrypt")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:%s\n" % bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode())
    proc, host = _start_registry(tmp_path, f"auth:\n  htpasswd:\n    realm: dockyard-test\n    path: {htpasswd}\n")
    yield host
    proc.kill()
    proc.wait()


def _load_busybox(e, tag):
    e.docker("load", "-i", str(busybox_tar()))
    e.docker("tag", busybox_image_id(), tag)


def test_push_rmi_pull_and_layer_reuse(images_engine, registry):  # noqa: F811
    e = images_engine
    ref = f"{registry}/team/bb:1.0"
    _load_busybox(e, ref)
    out = e.docker("push", ref).stdout.decode()
    assert f"The push refers to repository [{registry}/team/bb]" in out
    assert "Pushed" in out
    digest_line = [line for line in out.splitlines() if line.startswith("1.0: digest: sha256:")]
    assert len(digest_line) == 1, out
    pushed = digest_line[0].split()[2]
    raw = _manifest(registry, "team/bb", "1.0")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == pushed
    man = json.loads(raw)
    assert man["mediaType"] == SCHEMA2 and man["config"]["digest"] == busybox_image_id()
    info = json.loads(e.docker("image", "inspect", ref).stdout)[0]
    assert f"{registry}/team/bb@{pushed}" in info["RepoDigests"]

    # the same layers again: the registry has them
    out = e.docker("push", ref).stdout.decode()
    assert "Layer already exists" in out and "Pushed" not in out
    assert f"digest: {pushed}" in out
    # another repository of the same registry: the blob is mounted, not uploaded
    e.docker("tag", ref, f"{registry}/other/bb:2")
    out = e.docker("push", f"{registry}/other/bb:2").stdout.decode()
    assert "Mounted from team/bb" in out and "Pushed" not in out

    # --all-tags: every local tag of the repository
    e.docker("tag", ref, f"{registry}/team/bb:1.1")
    out = e.docker("push", "--all-tags", f"{registry}/team/bb").stdout.decode()
    assert "1.0: digest: " in out and "1.1: digest: " in out
    assert json.loads(_manifest(registry, "team/bb", "1.1"))["config"]["digest"] == busybox_image_id()

    # rmi, then pull back what was pushed: the same image, verified
    e.docker("rmi", "-f", busybox_image_id())
    assert e.docker("images", "-q").stdout.strip() == b""
    out = e.docker("pull", ref).stdout.decode()
    assert f"Digest: {pushed}" in out
    assert json.loads(e.docker("image", "inspect", ref).stdout)[0]["Id"] == busybox_image_id()


def test_chunked_upload_and_docker_py(images_engine, registry, monkeypatch):  # noqa: F811
    e = images_engine
    monkeypatch.setattr(pushmod, "MONOLITHIC_MAX", 1024)
    monkeypatch.setattr(pushmod, "CHUNK_SIZE", 256 << 10)  # busybox's ~2 MB layer goes in several PATCHes
    ref = f"{registry}/chunks/bb"
    _load_busybox(e, ref + ":c")
    msgs = list(e.client().api.push(ref, tag="c", stream=True, decode=True))
    pushing = [m for m in msgs if m.get("status") == "Pushing"]
    assert len(pushing) >= 4, msgs
    assert pushing[-1]["progressDetail"]["current"] == pushing[-1]["progressDetail"]["total"]
    aux = [m["aux"] for m in msgs if "aux" in m]
    assert aux and aux[0]["Tag"] == "c" and aux[0]["Digest"].startswith("sha256:")
    assert not [m for m in msgs if "error" in m]
    e.docker("rmi", "-f", busybox_image_id())
    e.docker("pull", ref + ":c")
    assert e.images.get(ref + ":c").id == busybox_image_id()


def test_an_image_pulled_from_an_oci_manifest_is_pushed_as_oci(images_engine, registry):  # noqa: F811
    e = images_engine
    config, layers = busybox_parts()
    api_push(registry, "src/oci", "1", config, layers)
    e.docker("pull", f"{registry}/src/oci:1")
    e.docker("tag", f"{registry}/src/oci:1", f"{registry}/dst/oci:1")
    out = e.docker("push", f"{registry}/dst/oci:1").stdout.decode()
    assert "Mounted from src/oci" in out  # the pulled blob's digest was remembered
    man = json.loads(_manifest(registry, "dst/oci", "1"))
    assert man["mediaType"] == OCI
    assert man["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_login_push_and_pull_with_basic_auth(images_engine, auth_registry):
    e = images_engine
    host = auth_registry
    p = e.docker("login", "-u", "alice", "--password-stdin", host, input=b"wrong", check=False)
    assert p.returncode == 1 and b"401" in p.stderr, p.stderr
    p = e.docker("login", "-u", "mallory", "--password-stdin", host, input=b"s3cret", check=False)
    assert p.returncode == 1
    ref = f"{host}/private/bb:1"
    _load_busybox(e, ref)
    p = e.docker("push", ref, check=False)  # no credentials yet
    assert p.returncode == 1 and b"unauthorized" in p.stderr.lower(), p.stderr
    p = e.docker("login", "-u", "alice", "--password-stdin", host, input=b"s3cret")
    assert b"Login Succeeded" in p.stdout
    out = e.docker("push", ref).stdout.decode()  # the CLI sends X-Registry-Auth from its config
    assert "Pushed" in out
    _manifest(host, "private/bb", "1", auth="alice:s3cret")
    e.docker("rmi", "-f", busybox_image_id())
    e.docker("pull", ref)
    assert e.images.get(ref).id == busybox_image_id()
    # docker-py: login answer and a pull with auth_config
    c = e.client()
    assert c.login("alice", "s3cret", registry=host, reauth=True)["Status"] == "Login Succeeded"
    e.docker("rmi", "-f", busybox_image_id())
    c.images.pull(f"{host}/private/bb", tag="1", auth_config={"username": "alice", "password": "s3cret"})
    assert e.images.get(ref).id == busybox_image_id()


def test_a_corrupted_blob_in_the_registry_is_refused_on_pull(images_engine, tmp_path):
    proc, host = _start_registry(tmp_path)
    try:
        e = images_engine
        ref = f"{host}/team/corrupt:1"
        _load_busybox(e, ref)
        e.docker("push", ref)
        man = json.loads(_manifest(host, "team/corrupt", "1"))
        hexd = man["layers"][0]["digest"].split(":")[1]
        data = tmp_path / "reg" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"
        blob = bytearray(data.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        data.write_bytes(bytes(blob))
        e.docker("rmi", "-f", busybox_image_id())
        layers_before = sorted(os.listdir(os.path.join(e.data_root, "image", "layers")))
        p = e.docker("pull", ref, check=False)
        assert p.returncode == 1 and b"failed verification" in p.stderr, p.stderr
        assert sorted(os.listdir(os.path.join(e.data_root, "image", "layers"))) == layers_before
        assert e.docker("images", "-q").stdout.strip() == b""
    finally:
        proc.kill()
        proc.wait()


def test_push_refusals(images_engine):
    e = images_engine
    p = e.docker("push", "127.0.0.1:1/never/pushed:1", check=False)
    assert p.returncode == 1 and b"tag does not exist" in p.stderr, p.stderr
    e.docker("load", "-i", str(busybox_tar()))
    e.docker("tag", busybox_image_id(), "registry.example.com/team/bb:1")
    p = e.docker("push", "registry.example.com/team/bb:1", check=False)
    assert p.returncode == 1 and b"only pushes to local registries" in p.stderr, p.stderr
    p = e.docker("login", "-u", "a", "--password-stdin", "registry.example.com", input=b"b", check=False)
    assert p.returncode == 1 and b"only talks to local registries" in p.stderr, p.stderr


class _LyingRegistry:
    """Answers every upload with a Location on another host (a port of its own): credentials must not go there."""

    def __init__(self):
        self.seen = []
        seen = self.seen
        self.other_port = free_port()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, status, headers=()):
                seen.append((self.command, self.headers.get("Host"), self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                if not self.headers.get("Authorization"):
                    return self._answer(401, [("WWW-Authenticate", 'Basic realm="x"')])
                self._answer(404)

            def do_POST(self):
                if not self.headers.get("Authorization"):
                    return self._answer(401, [("WWW-Authenticate", 'Basic realm="x"')])
                self._answer(202, [("Location", f"http://localhost:{outer.other_port}/steal")])

            do_PUT = do_PATCH = do_POST

        outer = self
        self.servers = [
            http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler),
            http.server.ThreadingHTTPServer(("127.0.0.1", self.other_port), Handler),
        ]
        self.host = "127.0.0.1:%d" % self.servers[0].server_address[1]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


def test_credentials_never_follow_an_upload_location_to_another_host(images_engine):
    e = images_engine
    reg = _LyingRegistry()
    try:
        ref = f"{reg.host}/team/bb:1"
        _load_busybox(e, ref)
        c = e.client()
        msgs = list(c.api.push(f"{reg.host}/team/bb", tag="1", stream=True, decode=True))
        assert any("error" in m for m in msgs)  # no credentials: the registry refuses
        assert all(s[3] is None for s in reg.seen)
        msgs = list(
            c.api.push(
                f"{reg.host}/team/bb", tag="1", stream=True, decode=True, auth_config={"username": "u", "password": "p"}
            )
        )
        assert any("error" in m for m in msgs)  # the stolen upload ends in the other host's 401, visibly
        to_other = [s for s in reg.seen if s[1] == f"localhost:{reg.other_port}"]
        assert to_other, reg.seen  # the engine did follow the Location...
        assert all(s[3] is None for s in to_other)  # ...without the credentials
        assert any(s[3] for s in reg.seen if s[1] == reg.host)  # which the registry itself did get
        assert e.docker("version").returncode == 0
    finally:
        reg.close()


class _TokenRegistry:
    """A registry front that only knows token auth: /v2/ wants a Bearer token from its /token realm."""

    def __init__(self, user="bob", password="pw"):
        self.scopes = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/token"):
                    outer.scopes.append(self.path)
                    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        return self._send(401, b'{"details":"bad credentials"}')
                    return self._send(200, json.dumps({"token": "tok-123"}).encode())
                if self.headers.get("Authorization") == "Bearer tok-123":
                    return self._send(200, b"{}")
                realm = f'Bearer realm="http://{outer.host}/token",service="fake"'
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                self._send(401, body, [("WWW-Authenticate", realm)])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_login_with_token_auth(images_engine):
    e = images_engine
    reg = _TokenRegistry()
    try:
        p = e.docker("login", "-u", "bob", "--password-stdin", reg.host, input=b"nope", check=False)
        assert p.returncode == 1 and b"401 Unauthorized" in p.stderr and b"authentication required" in p.stderr
        p = e.docker("login", "-u", "bob", "--password-stdin", reg.host, input=b"pw")
        assert b"Login Succeeded" in p.stdout
        assert all("account=bob" in s and "service=fake" in s for s in reg.scopes)
        res = e.client().login("bob", "pw", registry=reg.host, reauth=True)
        assert res["Status"] == "Login Succeeded"
    finally:
        reg.close()


def test_build_push_rmi_pull_run_on_a_real_engine(tmp_path):
    """The whole round trip on a running engine: the registry lives in the engine's network namespace."""
    if os.geteuid() != 0:
        pytest.skip("the engine needs root")
    from tests.engine.runtime_helper import RuntimeEngine

    eng = RuntimeEngine()
    reg = None
    try:
        eng.start()
        eng.load_busybox()
        pid = (eng.dir / "engine.pid").read_text().split()[0]
        in_net = ["nsenter", "-t", pid, "-n"]
        subprocess.run(in_net + ["ip", "link", "set", "lo", "up"], check=True)
        port = 16000 + os.getpid() % 1000
        cfg = tmp_path / "registry.yml"
        cfg.write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/reg\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        reg = subprocess.Popen(in_net + [REGISTRY, "serve", str(cfg)], stdout=subprocess.DEVNULL)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text('FROM busybox\nRUN echo built-and-pushed > /msg\nCMD ["cat", "/msg"]\n')
        ref = f"127.0.0.1:{port}/team/app:1"
        eng.docker("build", "-q", "-t", ref, str(ctx), timeout=120)
        image_id = eng.docker("images", "-q", "--no-trunc", ref).stdout.strip()
        deadline = time.monotonic() + 20  # only bounds a registry that never starts
        while True:
            p = eng.docker("push", ref, check=False)
            if p.returncode == 0 or time.monotonic() > deadline or "connection refused" not in p.stderr:
                break
            time.sleep(0.2)
        assert p.returncode == 0, p.stderr
        assert "Pushed" in p.stdout and "1: digest: sha256:" in p.stdout
        eng.docker("rmi", "-f", image_id)
        eng.docker("rmi", "busybox")
        out = eng.docker("pull", ref).stdout
        assert "Downloaded newer image" in out
        assert eng.docker("images", "-q", "--no-trunc", ref).stdout.strip() == image_id
        assert eng.docker("run", "--rm", ref).stdout == "built-and-pushed\n"
    finally:
        if reg is not None:
            reg.kill()
            reg.wait()
        eng.cleanup()


def test_docker_io_images_come_from_the_registry_mirror(images_engine, registry, tmp_path):  # noqa: F811
    """--registry-mirror: a docker.io name is pulled from the mirror, even under the local-only policy."""
    e = images_engine
    config, layers = busybox_parts()
    digest = api_push(registry, "library/busybox", "mirrored", config, layers)
    e.engine.config.registry_mirrors = [f"http://{registry}/"]
    out = e.docker("pull", "busybox:mirrored").stdout.decode()
    assert f"Digest: {digest}" in out
    assert e.images.get("busybox:mirrored").id == busybox_image_id()
    # not on the mirror: the local-only policy forbids docker.io, the mirror's answer is shown
    p = e.docker("pull", "busybox:nosuchtag", check=False)
    assert p.returncode == 1 and b"not found" in p.stderr, p.stderr
    # a mirror that is down, and no fallback allowed
    e.engine.config.registry_mirrors = ["http://127.0.0.1:1/"]
    p = e.docker("pull", "busybox:mirrored2", check=False)
    assert p.returncode == 1 and b"127.0.0.1:1" in p.stderr, p.stderr
