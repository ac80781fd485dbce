"""User images (--*-image): downloads verified by sha256 and cached by URL+digest, local files, pre-create checks.
Served by a real HTTP server on 127.0.0.1."""

import hashlib
import http.server
import os
import shutil
import subprocess
import threading

import pytest

from dockyard.drivers.guestimage import build, source
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


class Server:
    """Serves routes {path: (status, body, declared length or None)} on 127.0.0.1; counts requests."""

    def __init__(self):
        self.routes, self.hits = {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                status, body, length = outer.routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)  # a shorter body than declared: the connection just closes

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv(build.CACHE_ENV, raising=False)
    return str(tmp_path / "store-cache")


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def quiet(msg):
    pass


def test_download_verified_and_cached_by_url_and_digest(server, cache, image):
    data, digest = image
    server.routes["/img.qcow2"] = (200, data, None)
    said = []
    img = source.resolve(server.url + "/img.qcow2", digest.upper(), cache, said.append)
    assert img.disk.startswith(os.path.join(cache, "images", "user", "url-"))
    assert open(img.disk, "rb").read() == data and not img.kernel
    assert any("Download verified" in s for s in said)
    again = source.resolve(server.url + "/img.qcow2", digest, cache, quiet)
    assert again.disk == img.disk and server.hits == ["/img.qcow2"]  # served from the cache


def test_digest_mismatch_is_rejected_and_nothing_kept(server, cache, image):
    data, digest = image
    server.routes["/img.qcow2"] = (200, data, None)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DriverError, match=f"has sha256 {digest}, not the expected {wrong}: it was deleted"):
        source.resolve(server.url + "/img.qcow2", wrong, cache, quiet)
    assert files_under(cache) == []  # no partial or unverified file


def test_broken_transfer_is_rejected(server, cache, image):
    data, digest = image
    server.routes["/short"] = (200, data[:1000], len(data))
    with pytest.raises(DriverError, match="broke off|cannot download"):
        source.resolve(server.url + "/short", digest, cache, quiet)
    assert files_under(cache) == []


def test_http_error(server, cache, image):
    with pytest.raises(DriverError, match="HTTP 404"):
        source.resolve(server.url + "/missing", image[1], cache, quiet)


def test_raw_download_is_converted_to_qcow2(server, cache):
    raw = bytes(1 << 20)
    digest = hashlib.sha256(raw).hexdigest()
    server.routes["/disk.img"] = (200, raw, None)
    img = source.resolve(server.url + "/disk.img", digest, cache, quiet)
    assert source.image_format(img.disk) == "qcow2"
    assert not os.path.exists(os.path.join(os.path.dirname(img.disk), "download"))


def test_local_file_cached_by_content(tmp_path, cache, image):
    data, digest = image
    path = tmp_path / "mine.qcow2"
    path.write_bytes(data)
    img = source.resolve(str(path), "", cache, quiet)
    assert os.path.basename(os.path.dirname(img.disk)) == f"file-{digest[:24]}"
    assert path.exists()  # the user's file stays where it was
    with pytest.raises(DriverError, match="not the expected"):
        source.resolve(str(path), "0" * 64, cache, quiet)


def test_image_with_backing_file_is_refused(tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)], check=True)
    with pytest.raises(DriverError, match="backing file"):
        source.image_format(str(top))


def test_default_image_comes_from_the_build_cache(cache, monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "shared"))
    assert build.cache_root(cache) == str(tmp_path / "shared")
    assert build.cached_image(cache) is None


@pytest.mark.parametrize(
    "src,sha,message",
    [
        ("https://example.invalid/x.qcow2", "", "needs --qemu-image-sha256"),
        ("https://example.invalid/x.qcow2", "abc", "64 hexadecimal digits"),
        ("ftp://example.invalid/x.qcow2", "", "only http:// and https://"),
        ("/nonexistent/x.qcow2", "", "no such file"),
    ],
)
def test_pre_create_checks(src, sha, message):
    with pytest.raises(PreCreateCheckError, match=message):
        source.check(src, sha, "qemu-image")
