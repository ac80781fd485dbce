"""Debian's cloud image: fetched from a URL base serving the image and its SHA512SUMS (here a server on
127.0.0.1), verified by SHA-512, cached by digest, resumed with HTTP Range after a broken transfer,
never kept or booted when the digest differs; the cached image is used when the sums cannot be fetched."""

import hashlib
import http.server
import os
import shutil
import subprocess
import threading

import pytest

from dockyard.drivers.guestimage import debian
from dockyard.provisioner.core.errors import DriverError

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")

NAME = debian.image_filename("amd64")


class Server:
    """Serves files {name: bytes} with Range support; can cut a transfer after `cut` bytes."""

    def __init__(self):
        self.files, self.requests, self.cut = {}, [], None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.cut is not None and name == NAME:
                    body, outer.cut = body[: outer.cut], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, data, digest=None):
        self.files[NAME] = data
        self.files[debian.SUMS] = f"{digest or hashlib.sha512(data).hexdigest()}  {NAME}\n".encode()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKYARD_IMAGE_CACHE", raising=False)
    return str(tmp_path / "store" / "cache")


def test_downloaded_once_verified_and_cached_by_digest(server, cache, image):
    server.publish(image)
    lines = []
    img = debian.ensure(server.base, cache, lines.append, arch="amd64")
    with open(img.disk, "rb") as f:
        assert f.read() == image
    sha = hashlib.sha512(image).hexdigest()
    assert f"sha512-{sha[:32]}" in img.disk and not img.kernel
    assert any(line.startswith(f"Downloading {server.base}{NAME}") for line in lines)
    assert any("Downloaded" in line and "/s" in line for line in lines)  # bytes and rate
    server.requests.clear()
    again = debian.ensure(server.base, cache, lines.append, arch="amd64")
    assert again.disk == img.disk
    assert server.requests == [(debian.SUMS, None)]  # only the sums: the image comes from the cache


def test_digest_mismatch_deletes_the_download(server, cache, image):
    server.publish(image, digest="0" * 128)
    with pytest.raises(DriverError, match="not the published") as e:
        debian.ensure(server.base, cache, lambda m: None, arch="amd64")
    assert not isinstance(e.value, debian.DownloadUnavailable)  # never a reason to fall back silently
    left = [f for _, _, fs in os.walk(cache) for f in fs if f not in (".lock", "kvm-probe.json")]
    assert left == []


def test_broken_transfer_resumes_with_range(server, cache, image):
    server.publish(image)
    server.cut = len(image) // 3
    with pytest.raises(debian.DownloadUnavailable, match="resume"):
        debian.ensure(server.base, cache, lambda m: None, arch="amd64")
    server.requests.clear()
    lines = []
    img = debian.ensure(server.base, cache, lines.append, arch="amd64")
    with open(img.disk, "rb") as f:
        assert f.read() == image
    assert (NAME, f"bytes={len(image) // 3}-") in server.requests
    assert any("resuming at" in line for line in lines)


def test_unreachable_base_uses_the_cached_image_else_is_unavailable(server, cache, image):
    with pytest.raises(debian.DownloadUnavailable):
        debian.ensure(server.base, cache, lambda m: None, arch="amd64")  # nothing published, nothing cached
    server.publish(image)
    first = debian.ensure(server.base, cache, lambda m: None, arch="amd64")
    server.files.clear()
    lines = []
    assert debian.ensure(server.base, cache, lines.append, arch="amd64").disk == first.disk
    assert any(line.startswith("Warning:") and "cached" in line for line in lines)


def test_sums_without_the_file_and_non_images(server, cache):
    server.files[debian.SUMS] = b"abc  other.qcow2\n"
    with pytest.raises(DriverError, match="lists no valid SHA-512"):
        debian.ensure(server.base, cache, lambda m: None, arch="amd64")
    server.publish(b"not a disk image at all\n" * 100)
    with pytest.raises(DriverError, match="not qcow2|not a usable disk image"):
        debian.ensure(server.base, cache, lambda m: None, arch="amd64")


def test_url_base_and_arch():
    assert debian.url_base("http://127.0.0.1:1/x") == "http://127.0.0.1:1/x/"
    assert debian.url_base("") == debian.DEFAULT_URL_BASE
    with pytest.raises(DriverError):
        debian.url_base("file:///etc/")
    assert debian.debian_arch("x86_64") == "amd64" and debian.debian_arch("aarch64") == "arm64"
    with pytest.raises(DriverError, match="no cloud image"):
        debian.debian_arch("mips")
