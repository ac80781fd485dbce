"""A push whose layers the engine already pushed somewhere: every layer's blob is looked up (HEAD) at once by
the upload threads. On a loopback registry the engine tries HTTPS first and falls back to plain HTTP; that
must be found once, before the threads start: raced, a HEAD still on HTTPS failed with an SSL error after
another thread had switched to HTTP, and the push failed."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time

import pytest

from tests.engine import images_helper
from tests.engine.test_images_pull import free_port
from tests.images import image_config, layer_tar, write_archive

images_engine = images_helper.images_engine  # the fixture, used by name below

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="needs docker-registry (apt-get install docker-registry)"
)


def start_registry(directory):
    """Debian's docker-registry on a free loopback port, plain HTTP, its storage under directory."""
    port = free_port()
    cfg = directory / "registry.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {directory}/reg\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20  # only bounds a hang
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("docker-registry did not start") from None
            time.sleep(0.05)


def test_a_second_registry_gets_an_image_whose_blobs_are_known(images_engine, tmp_path):
    e = images_engine
    layers = [layer_tar([(f"layer{i}.txt", "file", f"layer {i}\n" * (i + 1), 0o644)]) for i in range(6)]
    config = image_config(["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers])
    write_archive(tmp_path / "six.tar", [(config, layers, ["six:1"])])
    e.docker("load", "-i", str(tmp_path / "six.tar"))
    for n in range(3):  # the first push records the blobs; the later ones HEAD all six at once
        (tmp_path / f"r{n}").mkdir()
        proc, host = start_registry(tmp_path / f"r{n}")
        try:
            e.docker("tag", "six:1", f"{host}/team/six:1")
            p = e.docker("push", f"{host}/team/six:1", check=False)
            out = p.stdout.decode() + p.stderr.decode()
            assert p.returncode == 0 and "1: digest: sha256:" in out, out
            assert out.count("Pushed") == 6, out  # a fresh registry: every layer uploaded again
        finally:
            proc.kill()
            proc.wait()
