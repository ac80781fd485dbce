"""Layer downloads of `docker pull`: parallel, resumable with Range, shared between pulls, TLS via certs.d.

The registries here are small http.server fronts on 127.0.0.1 serving a hand-built image, each
misbehaving in one way: breaking a blob transfer half-way (the pull resumes it with a Range
request and still verifies the digest; a wrong second half is refused), counting blob GETs (two
concurrent pulls of images sharing a layer download it once), holding blobs until three are in
flight (the pull runs three at a time, never more), and speaking TLS with a certificate from a
test CA (trusted only through certs.d/<host:port>/ca.crt, or a client certificate pair there).
"""

import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import ssl
import subprocess
import tarfile
import threading

import pytest

from dockyard.engine.errors import SystemFailure
from dockyard.engine.images import download, registry
from dockyard.engine.images.store import ImageStore

LAYER_SIZE = 3 << 20  # incompressible, so each blob is ~3 MB on the wire


def _sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_image(names, seed=b""):
    """(config bytes, [(blob, diff_id)]) for an image whose layers each hold one file of random bytes."""
    layers = []
    for name in names:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = hashlib.sha256(seed + name.encode()).digest() * (LAYER_SIZE // 32)
            data = bytes(b ^ i % 251 for i, b in enumerate(data[:4096])) + os.urandom(LAYER_SIZE - 4096)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        layers.append((gzip.compress(raw, compresslevel=1, mtime=0), _sha(raw)))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/f"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        }
    ).encode()
    return config, layers


class FakeRegistry:
    """A registry front: manifests by tag, blobs by digest, with hooks for misbehaviour."""

    def __init__(self, tls=None):
        self.manifests = {}
        self.blobs = {}
        self.gets = {}  # digest -> number of blob GETs
        self.ranges = []  # (digest, Range header) of every ranged GET
        self.breaks = {}  # digest -> how many more transfers stop half-way through what was asked
        self.sent = {}  # digest -> bytes of it sent by broken transfers
        self.break_once = set()  # digests whose first transfer stops half-way
        self.corrupt_resume = set()  # digests whose resumed part is wrong
        self.hold = {}  # digest -> Event the blob's answer waits for
        self.in_flight = 0
        self.max_in_flight = 0
        self.all_three = threading.Barrier(3, timeout=20)  # used when barrier_blobs is set
        self.barrier_blobs = False
        self.barrier_left = 3
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle(self):
                if tls is None:
                    try:
                        if self.request.recv(1, socket.MSG_PEEK) == b"\x16":
                            return  # a TLS ClientHello to a plain-HTTP server: hang up, as a real one would fail
                    except OSError:
                        return
                super().handle()

            def do_GET(self):
                fake.serve(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        for event in self.hold.values():
            event.set()
        self.server.shutdown()
        self.server.server_close()

    def add_image(self, repo, tag, config, layers):
        self.blobs[_sha(config)] = config
        descs = []
        for blob, _ in layers:
            self.blobs[_sha(blob)] = blob
            descs.append(
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _sha(blob), "size": len(blob)}
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha(config),
                    "size": len(config),
                },
                "layers": descs,
            }
        ).encode()
        self.manifests[(repo, tag)] = manifest
        return _sha(manifest)

    def serve(self, h):
        parts = h.path.split("/")
        if h.path == "/v2/":
            return self.answer(h, 200, b"{}")
        if len(parts) >= 5 and parts[-2] == "manifests":
            body = self.manifests.get(("/".join(parts[2:-2]), parts[-1]))
            if body is None:
                return self.answer(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
            return self.answer(h, 200, body, "application/vnd.oci.image.manifest.v1+json")
        digest = parts[-1]
        blob = self.blobs.get(digest)
        if blob is None or parts[-2] != "blobs":
            return self.answer(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
        with self.lock:
            self.gets[digest] = self.gets.get(digest, 0) + 1
            first = self.gets[digest] == 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if digest in self.hold:
                self.hold[digest].wait(30)
            with self.lock:
                at_barrier = self.barrier_blobs and digest != self.config_digest and self.barrier_left > 0
                self.barrier_left -= at_barrier
            if at_barrier:  # the first three layer GETs each wait until all three are being served
                try:
                    self.all_three.wait()
                except threading.BrokenBarrierError:
                    pass
            rng = h.headers.get("Range")
            if self.breaks.get(digest):  # send half of what was asked for, then hang up
                self.breaks[digest] -= 1
                start = int(rng.split("=", 1)[1].rstrip("-")) if rng else 0
                if rng:
                    self.ranges.append((digest, rng))
                rest = blob[start:]
                h.send_response(206 if rng else 200)
                if rng:
                    h.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(blob) - 1, len(blob)))
                h.send_header("Content-Length", str(len(rest)))
                h.end_headers()
                h.wfile.write(rest[: len(rest) // 2])
                self.sent[digest] = self.sent.get(digest, 0) + len(rest) // 2
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if rng:
                self.ranges.append((digest, rng))
                start = int(rng.split("=", 1)[1].rstrip("-"))
                rest = blob[start:]
                if digest in self.corrupt_resume:
                    rest = bytes(b ^ 0xFF for b in rest)
                h.send_response(206)
                h.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(blob) - 1, len(blob)))
                h.send_header("Content-Length", str(len(rest)))
                h.end_headers()
                h.wfile.write(rest)
                return
            if first and digest in self.break_once:
                h.send_response(200)
                h.send_header("Content-Length", str(len(blob)))
                h.end_headers()
                h.wfile.write(blob[: len(blob) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            self.answer(h, 200, blob, "application/octet-stream")
        finally:
            with self.lock:
                self.in_flight -= 1

    config_digest = ""

    @staticmethod
    def answer(h, status, body, ctype="application/json"):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        if ctype.startswith("application/vnd"):
            h.send_header("Docker-Content-Digest", _sha(body))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture
def fake():
    reg = FakeRegistry()
    yield reg
    reg.close()


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "root"))


class Messages(list):
    def statuses(self, sid):
        return [m["status"] for m in self if m.get("id") == sid]


def sid_of(blob):
    return _sha(blob)[7:19]


def test_a_broken_transfer_resumes_with_range_and_is_verified(fake, store):
    config, layers = make_image(["a", "b"])
    fake.add_image("team/app", "1", config, layers)
    broken = _sha(layers[0][0])
    fake.break_once.add(broken)
    msgs = Messages()
    img = registry.pull(store, "%s/team/app" % fake.host, "1", msgs.append)
    assert img.id == _sha(config)
    assert fake.gets[broken] == 2 and fake.ranges == [(broken, "bytes=%d-" % (len(layers[0][0]) // 2))]
    assert all(store.layers.exists(d) for _, d in layers)
    st = msgs.statuses(sid_of(layers[0][0]))
    assert st[0] == "Pulling fs layer" and st[-1] == "Pull complete"
    assert st.index("Verifying Checksum") < st.index("Download complete") < st.index("Extracting")
    bars = [m for m in msgs if m.get("status") == "Downloading" and m.get("progress")]
    assert bars and all(
        m["progressDetail"]["total"] == len(layers[0][0]) or m["id"] != sid_of(layers[0][0]) for m in bars
    )
    assert bars[-1]["progress"].startswith("[" + "=" * 50 + ">]")
    assert os.listdir(os.path.join(store.layers.tmp, "downloads")) == []  # nothing partial left


def test_a_resumed_blob_whose_second_half_is_wrong_is_refused(fake, store):
    config, layers = make_image(["a"], seed=b"bad")
    fake.add_image("team/bad", "1", config, layers)
    broken = _sha(layers[0][0])
    fake.break_once.add(broken)
    fake.corrupt_resume.add(broken)
    with pytest.raises(SystemFailure, match="failed verification"):
        registry.pull(store, "%s/team/bad" % fake.host, "1", Messages().append)
    assert fake.ranges  # it did resume, and then refused the result
    assert not store.layers.exists(layers[0][1]) and store.layers.list_ids() == []
    assert os.listdir(os.path.join(store.layers.tmp, "downloads")) == []  # the bad partial is not kept to resume


def test_a_failed_pull_leaves_its_partial_blob_and_the_next_pull_resumes_it(fake, store):
    config, layers = make_image(["p"], seed=b"partial")
    fake.add_image("team/partial", "1", config, layers)
    blob = layers[0][0]
    fake.breaks[_sha(blob)] = download.MAX_ATTEMPTS  # every attempt of the first pull breaks
    with pytest.raises(SystemFailure, match="error downloading"):
        registry.pull(store, "%s/team/partial" % fake.host, "1", Messages().append)
    partial = os.path.join(store.layers.tmp, "downloads", _sha(blob)[7:] + ".partial")
    kept = os.path.getsize(partial)
    assert kept == fake.sent[_sha(blob)] and 0 < kept < len(blob)
    assert store.layers.list_ids() == []
    fake.ranges.clear()
    img = registry.pull(store, "%s/team/partial" % fake.host, "1", Messages().append)
    assert img.id == _sha(config) and store.layers.exists(layers[0][1])
    assert fake.ranges == [(_sha(blob), "bytes=%d-" % kept)]  # only the rest was fetched
    assert not os.path.exists(partial)


def test_layers_download_three_at_a_time(fake, store):
    config, layers = make_image(["a", "b", "c", "d", "e"], seed=b"par")
    fake.add_image("team/five", "1", config, layers)
    fake.config_digest = _sha(config)
    fake.barrier_blobs = True  # each blob answer waits until three are being served at once
    msgs = Messages()
    registry.pull(store, "%s/team/five" % fake.host, "1", msgs.append)
    assert not fake.all_three.broken  # three downloads really ran at the same time
    assert fake.max_in_flight == download.MAX_CONCURRENT
    waiting = [m["id"] for m in msgs if m.get("status") == "Waiting"]
    assert waiting == [sid_of(b) for b, _ in layers[3:]]
    assert msgs[-1]["status"] == "Status: Downloaded newer image for %s/team/five:1" % fake.host
    msgs2 = Messages()
    registry.pull(store, "%s/team/five" % fake.host, "1", msgs2.append)
    assert {m["status"] for m in msgs2 if m.get("id") and m["id"] != "1"} == {"Already exists"}
    assert all(n == 1 for d, n in fake.gets.items() if d != _sha(config))


def test_two_concurrent_pulls_download_a_shared_layer_once(fake, store):
    config1, layers1 = make_image(["base", "one"], seed=b"s")
    config2, _ = make_image(["base", "two"], seed=b"s")
    _, two = make_image(["two"], seed=b"s")
    layers2 = [layers1[0], two[0]]
    config2 = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers2]}}
    ).encode()
    fake.add_image("team/one", "1", config1, layers1)
    fake.add_image("team/two", "1", config2, layers2)
    shared = _sha(layers1[0][0])
    fake.hold[shared] = threading.Event()
    m1, m2 = Messages(), Messages()
    errors = []

    def run(repo, msgs):
        try:
            registry.pull(store, "%s/%s" % (fake.host, repo), "1", msgs.append)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    t1 = threading.Thread(target=run, args=("team/one", m1))
    t1.start()
    for _ in range(2000):  # wait (bounded) until pull 1 is inside the shared blob's GET
        if fake.gets.get(shared):
            break
        threading.Event().wait(0.01)
    t2 = threading.Thread(target=run, args=("team/two", m2))
    t2.start()
    sid = sid_of(layers1[0][0])
    for _ in range(2000):  # pull 2 reaches the shared layer and waits for pull 1's download
        if "Waiting" in m2.statuses(sid):
            break
        threading.Event().wait(0.01)
    fake.hold[shared].set()
    t1.join(60)
    t2.join(60)
    assert not errors, errors
    assert fake.gets[shared] == 1
    assert "Waiting" in m2.statuses(sid) and m2.statuses(sid)[-1] == "Pull complete"
    assert store.exists(_sha(config1)) and store.exists(_sha(config2))


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, a server cert for IP 127.0.0.1, a client cert, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca + ".key", "-out", ca + ".crt",
                 "-days", "2", "-subj", "/CN=dockyard test " + ca, cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=" + name, cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", name + ".crt", "-days", "2", *ext, cwd=d)  # fmt: skip
    return d


def _tls_fake(pki, client_ca=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki / "ca.crt"))
    return FakeRegistry(tls=ctx)


def test_https_registry_trusted_through_certs_d(pki, tmp_path, store):
    reg = _tls_fake(pki)
    try:
        config, layers = make_image(["t"], seed=b"tls")
        reg.add_image("team/tls", "1", config, layers)
        certs = tmp_path / "certs.d"
        # no certs.d entry: a loopback registry is insecure (dockerd's rule): HTTPS unverified works
        other_store = ImageStore(str(tmp_path / "first"))
        img = registry.pull(other_store, "%s/team/tls" % reg.host, "1", Messages().append, certs_dirs=[str(certs)])
        assert img.id == _sha(config)
        # a certs.d entry with the wrong CA: HTTPS, and the certificate is refused
        (certs / reg.host).mkdir(parents=True)
        (certs / reg.host / "ca.crt").write_bytes((pki / "other.crt").read_bytes())
        with pytest.raises(SystemFailure, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            registry.pull(store, "%s/team/tls" % reg.host, "1", Messages().append, certs_dirs=[str(certs)])
        assert store.layers.list_ids() == []
        # the right CA: verified HTTPS, the pull works
        (certs / reg.host / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
        img = registry.pull(store, "%s/team/tls" % reg.host, "1", Messages().append, certs_dirs=[str(certs)])
        assert img.id == _sha(config)
    finally:
        reg.close()


def test_client_certificate_pair_from_certs_d(pki, tmp_path, store):
    reg = _tls_fake(pki, client_ca=True)
    try:
        config, layers = make_image(["c"], seed=b"client")
        reg.add_image("team/mtls", "1", config, layers)
        hostdir = tmp_path / "certs.d" / reg.host
        hostdir.mkdir(parents=True)
        (hostdir / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
        certs = [str(tmp_path / "certs.d")]
        with pytest.raises(SystemFailure):  # the registry wants a client certificate
            registry.pull(store, "%s/team/mtls" % reg.host, "1", Messages().append, certs_dirs=certs)
        (hostdir / "client.cert").write_bytes((pki / "client.crt").read_bytes())
        with pytest.raises(SystemFailure, match="missing key client.key"):
            registry.pull(store, "%s/team/mtls" % reg.host, "1", Messages().append, certs_dirs=certs)
        (hostdir / "client.key").write_bytes((pki / "client.key").read_bytes())
        img = registry.pull(store, "%s/team/mtls" % reg.host, "1", Messages().append, certs_dirs=certs)
        assert img.id == _sha(config)
    finally:
        reg.close()


def test_insecure_registry_tries_https_then_plain_http(pki, fake, store):
    config, layers = make_image(["i"], seed=b"insecure")
    fake.add_image("team/plain", "1", config, layers)
    reg = registry.Registry(fake.host, "team/plain", insecure_registries=[fake.host])
    assert reg.scheme == "https" and not reg.verify_tls
    img = registry.pull(store, "%s/team/plain" % fake.host, "1", Messages().append, insecure_registries=[fake.host])
    assert img.id == _sha(config)
    tls = _tls_fake(pki)  # HTTPS with a certificate nobody trusts: accepted for an --insecure-registry host only
    try:
        config2, layers2 = make_image(["j"], seed=b"insecure-tls")
        tls.add_image("team/selfsigned", "1", config2, layers2)
        img = registry.pull(
            store, "%s/team/selfsigned" % tls.host, "1", Messages().append, insecure_registries=[tls.host]
        )
        assert img.id == _sha(config2) and tls.gets  # it was served over TLS
    finally:
        tls.close()


def test_progress_bar_matches_docker():
    assert download.human_size(512) == "512B" and download.human_size(1234567) == "1.23MB"
    bar = download.progress_bar(50, 100)
    assert bar.startswith("[" + "=" * 25 + ">" + " " * 25 + "] ") and bar.endswith("50B/100B")
