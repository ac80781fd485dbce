"""`docker pull` against a real registry (Debian's docker-registry, distribution 2.8) on 127.0.0.1.

Images are pushed with the distribution HTTP API (blob uploads + manifest PUT),
then pulled through the engine by the real docker CLI and docker-py. Only
loopback is ever contacted: the engine's default pull policy refuses other
registries before opening any connection.
"""

import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time

import pytest

from tests.engine import images_helper, test_pull_parallel
from tests.images import busybox_image_id, busybox_tar

images_engine = images_helper.images_engine  # the fixture, used by name below
pki = test_pull_parallel.pki  # the test CA and its certificates (module-scoped fixture)

REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(REGISTRY is None, reason="needs docker-registry (apt-get install docker-registry)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    port = free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/reg\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([REGISTRY, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20  # only bounds a hang
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("docker-registry did not start: %s" % proc.stderr.read().decode())
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def _req(host, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def push(host, repo, tag, config, layers, gz=True):
    """Push config + layers (uncompressed tars) as an OCI manifest; returns the manifest digest."""
    descs = []
    for blob, media in [(config, None)] + [(gzip.compress(l, mtime=0) if gz else l, "layer") for l in layers]:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        status, headers, _ = _req(host, "POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, status
        loc = headers["location"]
        loc = loc.split(host, 1)[-1] if host in loc else loc
        sep = "&" if "?" in loc else "?"
        status, _, _ = _req(
            host, "PUT", f"{loc}{sep}digest={digest}", body=blob, headers={"Content-Type": "application/octet-stream"}
        )
        assert status == 201, status
        if media:
            descs.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz else ""),
                    "digest": digest,
                    "size": len(blob),
                }
            )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    status, _, body = _req(
        host,
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        body=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, body
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def busybox_parts():
    with tarfile.open(busybox_tar()) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        return tar.extractfile(manifest["Config"]).read(), [tar.extractfile(l).read() for l in manifest["Layers"]]


def test_pull_with_the_cli_and_docker_py(images_engine, registry, monkeypatch):
    e = images_engine
    config, layers = busybox_parts()
    digest = push(registry, "team/busybox", "1.0", config, layers)
    out = e.docker("pull", f"{registry}/team/busybox:1.0").stdout.decode()
    assert "Pulling from team/busybox" in out and f"Digest: {digest}" in out
    assert f"Status: Downloaded newer image for {registry}/team/busybox:1.0" in out
    info = json.loads(e.docker("image", "inspect", f"{registry}/team/busybox:1.0").stdout)[0]
    assert info["Id"] == busybox_image_id()
    assert info["RepoDigests"] == [f"{registry}/team/busybox@{digest}"]
    out = e.docker("pull", f"{registry}/team/busybox:1.0").stdout.decode()
    assert "Image is up to date" in out
    # by digest; and the image is usable by digest reference afterwards
    e.docker("pull", f"{registry}/team/busybox@{digest}")
    assert e.docker("images", "-q", "--no-trunc", f"{registry}/team/busybox").stdout.decode().split() == [
        busybox_image_id()
    ]
    p = e.docker("pull", f"{registry}/team/busybox:nosuchtag", check=False)
    assert p.returncode == 1 and b"not found" in p.stderr
    p = e.docker("pull", f"{registry}/nosuch/repo", check=False)
    assert p.returncode == 1 and (b"not found" in p.stderr or b"does not exist" in p.stderr)

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    client = e.client()
    client.images.remove(f"{registry}/team/busybox:1.0")
    img = client.images.pull(f"{registry}/team/busybox", tag="1.0")
    assert img.id == busybox_image_id() and f"{registry}/team/busybox:1.0" in img.tags


def test_default_policy_refuses_other_registries_without_any_connection(images_engine):
    p = images_engine.docker("pull", "busybox", check=False)
    assert p.returncode == 1 and b"only pulls from local registries" in p.stderr
    p = images_engine.docker("pull", "quay.io/some/image:1", check=False)
    assert p.returncode == 1 and b"only pulls from local registries" in p.stderr


def test_uncompressed_layers_and_insecure_flag(images_engine, registry):
    config, layers = busybox_parts()
    push(registry, "raw", "latest", config, layers, gz=False)
    out = images_engine.docker("pull", f"{registry}/raw").stdout.decode()
    assert "Pull complete" in out or "Already exists" in out
    from dockyard.engine.images.registry import is_insecure

    assert is_insecure("localhost:5000") and is_insecure("127.0.0.1:5000") and not is_insecure("10.0.0.1:5000")
    assert is_insecure("10.0.0.1:5000", ["10.0.0.0/8"]) and is_insecure("reg.lan:443", ["reg.lan:443"])


def test_multi_layer_pull_progress_and_a_corrupted_blob_is_refused(images_engine, registry, tmp_path):
    """Four layers through the CLI: each shows docker's progress; a blob corrupted in the registry's storage
    is refused (the digest check), nothing of it is stored, and the engine still answers."""
    import io

    config, layers = test_pull_parallel.make_image(["a", "b", "c", "d"], seed=b"cli")
    raws = [gzip.decompress(blob) for blob, _ in layers]
    push(registry, "team/multi", "1", config, raws)
    out = images_engine.docker("pull", f"{registry}/team/multi:1").stdout.decode()
    for raw in raws:
        sid = hashlib.sha256(gzip.compress(raw, mtime=0)).hexdigest()[:12]
        for status in ("Pulling fs layer", "Verifying Checksum", "Download complete", "Pull complete"):
            assert f"{sid}: {status}" in out, (sid, status, out)
    assert f"Status: Downloaded newer image for {registry}/team/multi:1" in out

    bad_raw = io.BytesIO()
    with tarfile.open(fileobj=bad_raw, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 1 << 20
        tar.addfile(info, io.BytesIO(b"x" * (1 << 20)))
    cfg = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
            "sha256:" + hashlib.sha256(bad_raw.getvalue()).hexdigest()]}}
    ).encode()  # fmt: skip
    push(registry, "team/corrupt", "1", cfg, [bad_raw.getvalue()])
    blob_hex = hashlib.sha256(gzip.compress(bad_raw.getvalue(), mtime=0)).hexdigest()
    data = tmp_path / "reg/docker/registry/v2/blobs/sha256" / blob_hex[:2] / blob_hex / "data"
    body = bytearray(data.read_bytes())
    body[len(body) // 2] ^= 0xFF  # same size, different content
    data.write_bytes(bytes(body))
    before = set(images_engine.docker("images", "-q", "--no-trunc").stdout.decode().split())
    p = images_engine.docker("pull", f"{registry}/team/corrupt:1", check=False)
    assert p.returncode == 1 and b"failed verification" in p.stderr, p.stderr
    assert set(images_engine.docker("images", "-q", "--no-trunc").stdout.decode().split()) == before
    layer_dirs = os.listdir(os.path.join(images_engine.data_root, "image", "layers"))
    assert json.loads(cfg)["rootfs"]["diff_ids"][0][7:] not in layer_dirs
    assert os.listdir(os.path.join(images_engine.data_root, "image", "tmp", "downloads")) == []


def test_https_docker_registry_with_its_own_ca_through_certs_d(images_engine, registry, tmp_path, pki):
    """docker-registry over TLS (a certificate from a test CA) serving what was pushed to the plain one:
    refused until <data-root>/certs.d/<host:port>/ca.crt names the CA, then pulled and verified."""
    config, layers = busybox_parts()
    push(registry, "team/tls", "1", config, layers)
    port = free_port()
    cfg = tmp_path / "tls.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/reg\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {pki}/server.crt\n    key: {pki}/server.key\n"
    )
    proc = subprocess.Popen([REGISTRY, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20  # only bounds a hang
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "TLS docker-registry did not start"
                time.sleep(0.05)
        host = f"127.0.0.1:{port}"
        # loopback without certs.d: insecure as in dockerd, so HTTPS unverified (then plain HTTP) works
        out = images_engine.docker("pull", f"{host}/team/tls:1").stdout.decode()
        assert f"Status: Downloaded newer image for {host}/team/tls:1" in out
        images_engine.docker("rmi", f"{host}/team/tls:1")
        hostdir = os.path.join(images_engine.data_root, "certs.d", host)
        os.makedirs(hostdir)
        shutil.copy(pki / "other.crt", os.path.join(hostdir, "ca.crt"))
        p = images_engine.docker("pull", f"{host}/team/tls:1", check=False)
        assert p.returncode == 1 and b"certificate verify failed" in p.stderr.lower(), p.stderr
        shutil.copy(pki / "ca.crt", os.path.join(hostdir, "ca.crt"))
        out = images_engine.docker("pull", f"{host}/team/tls:1").stdout.decode()
        assert f"Status: Downloaded newer image for {host}/team/tls:1" in out
        info = json.loads(images_engine.docker("image", "inspect", f"{host}/team/tls:1").stdout)[0]
        assert info["Id"] == busybox_image_id()
    finally:
        proc.kill()
        proc.wait()
