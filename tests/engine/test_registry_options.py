"""Registry client defects found against dockerd (issue 10): registries on loopback are tried over HTTPS
(unverified) before plain HTTP, as dockerd treats localhost/127.0.0.0/8/::1; and
--max-concurrent-downloads / --max-concurrent-uploads are engine options (flags and daemon.json keys,
dockerd's defaults 3 and 5, validated with dockerd's words)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest

from dockyard.engine import config as configmod
from dockyard.engine.images import registry
from tests.engine.runtime_helper import RuntimeEngine
from tests.engine.test_pull_parallel import FakeRegistry, Messages, make_image
from tests.engine.test_pull_parallel import fake as fake  # fixtures, used by name below
from tests.engine.test_pull_parallel import pki as pki
from tests.engine.test_pull_parallel import store as store

REGISTRY = shutil.which("docker-registry")


def _sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tls_fake(pki):
    """The fake registry over TLS with a certificate from the test CA (which the engine does not trust)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    return FakeRegistry(tls=ctx)


def test_a_loopback_registry_is_tried_over_https_first(pki, fake, store):
    """No --insecure-registry, no certs.d: a TLS registry on 127.0.0.1 with a certificate nobody
    trusts is pulled from over HTTPS (dockerd skips verification for insecure registries), and a
    plain HTTP one still works through the fallback."""
    tls = _tls_fake(pki)
    try:
        config, layers = make_image(["t"], seed=b"loopback-tls")
        tls.add_image("team/tls", "1", config, layers)
        reg = registry.Registry(tls.host, "team/tls")
        assert reg.scheme == "https" and not reg.verify_tls and reg.http_fallback
        img = registry.pull(store, "%s/team/tls" % tls.host, "1", Messages().append)
        assert img.id == _sha(config) and tls.gets  # served over TLS
    finally:
        tls.close()
    config, layers = make_image(["p"], seed=b"loopback-plain")
    fake.add_image("team/plain", "1", config, layers)
    img = registry.pull(store, "%s/team/plain" % fake.host, "1", Messages().append)
    assert img.id == _sha(config)
    # a host that is not on loopback and not listed stays verified HTTPS only
    other = registry.Registry("registry.example:5000", "team/x")
    assert other.scheme == "https" and other.verify_tls and not other.http_fallback


def test_concurrency_options_parse_and_validate(tmp_path):
    cfg, _ = configmod.parse_config(["--config-file", _write(tmp_path, {})])
    assert (cfg.max_concurrent_downloads, cfg.max_concurrent_uploads) == (3, 5)  # dockerd's defaults
    cfg, _ = configmod.parse_config(["--max-concurrent-downloads", "1", "--max-concurrent-uploads", "2"])
    assert (cfg.max_concurrent_downloads, cfg.max_concurrent_uploads) == (1, 2)
    path = _write(tmp_path, {"max-concurrent-downloads": 7, "max-concurrent-uploads": 0})
    cfg, _ = configmod.parse_config(["--config-file", path])
    assert (cfg.max_concurrent_downloads, cfg.max_concurrent_uploads) == (7, 5)  # 0: the default, as moby
    cfg, _ = configmod.parse_config(["--config-file", path, "--max-concurrent-downloads", "2"])
    assert cfg.max_concurrent_downloads == 2  # the flag wins over the file
    with pytest.raises(configmod.ConfigError, match="invalid max concurrent downloads: -1"):
        configmod.parse_config(["--max-concurrent-downloads", "-1"])
    with pytest.raises(configmod.ConfigError, match="invalid max concurrent uploads: -3"):
        configmod.parse_config(["--config-file", _write(tmp_path, {"max-concurrent-uploads": -3})])
    with pytest.raises(configmod.ConfigError, match="must be an integer"):
        configmod.parse_config(["--config-file", _write(tmp_path, {"max-concurrent-downloads": "3"})])
    with pytest.raises(SystemExit):  # argparse: not a number
        configmod.parse_config(["--max-concurrent-uploads", "many"])


def _write(tmp_path, doc):
    path = tmp_path / ("daemon-%d.json" % len(list(tmp_path.iterdir())))
    path.write_text(json.dumps(doc))
    return str(path)


class OptionsEngine(RuntimeEngine):
    def __init__(self, *extra):
        super().__init__()
        self.extra = list(extra)

    def argv(self):
        return super().argv() + self.extra


def _serve_registry(eng, tmp_path, name, tls=None):
    """docker-registry on 127.0.0.1 inside the engine's network namespace -> (process, host:port)."""
    pid = (eng.dir / "engine.pid").read_text().split()[0]
    in_net = ["nsenter", "-t", pid, "-n"]
    subprocess.run(in_net + ["ip", "link", "set", "lo", "up"], check=True)
    with socket.socket() as s:  # any free port number; the namespace's own ports are all free
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / (name + ("-tls" if tls else "") + ".yml")
    text = (
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/{name}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if tls:
        text += f"  tls:\n    certificate: {tls}/server.crt\n    key: {tls}/server.key\n"
    cfg.write_text(text)
    proc = subprocess.Popen(in_net + [REGISTRY, "serve", str(cfg)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20  # only bounds a registry that never starts
    probe = in_net + [sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"]
    while subprocess.run(probe, capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("docker-registry did not start")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


@pytest.mark.skipif(os.geteuid() != 0 or REGISTRY is None, reason="needs root and docker-registry")
def test_one_at_a_time_on_a_real_engine_and_https_on_loopback(tmp_path, pki):
    """An engine started with --max-concurrent-downloads 1 --max-concurrent-uploads 1: a two-layer image
    is pushed and pulled one layer at a time (the CLI shows the second layer Waiting); the same image
    is then pulled from a TLS docker-registry on loopback with an untrusted certificate and no certs.d."""
    eng = OptionsEngine("--max-concurrent-downloads", "1", "--max-concurrent-uploads", "1")
    procs = []
    try:
        eng.start()
        eng.load_busybox()
        plain, host = _serve_registry(eng, tmp_path, "plain")
        procs.append(plain)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo two-layers > /msg\n")
        ref = f"{host}/team/two:1"
        eng.docker("build", "-q", "-t", ref, str(ctx), timeout=120)
        image_id = eng.docker("images", "-q", "--no-trunc", ref).stdout.strip()
        pushed = eng.docker("push", ref).stdout
        assert pushed.count(": Waiting") == 1 and pushed.count(": Pushed") == 2, pushed
        eng.docker("rmi", "-f", image_id)
        eng.docker("rmi", "busybox")
        pulled = eng.docker("pull", ref).stdout
        assert pulled.count(": Waiting") == 1 and pulled.count(": Pull complete") == 2, pulled
        assert eng.docker("run", "--rm", ref, "cat", "/msg").stdout == "two-layers\n"
        # the same registry storage served over TLS with a certificate no CA of the engine knows
        secure, tls_host = _serve_registry(eng, tmp_path, "plain", tls=pki)  # the same storage directory
        procs.append(secure)
        eng.docker("rmi", "-f", image_id)
        out = eng.docker("pull", f"{tls_host}/team/two:1").stdout
        assert "Downloaded newer image" in out
        assert eng.docker("images", "-q", "--no-trunc", f"{tls_host}/team/two:1").stdout.strip() == image_id
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        eng.cleanup()
