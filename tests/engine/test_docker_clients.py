"""The real docker CLI and docker-py against the engine, over a unix socket and over mutual TLS."""

import json
import os
import shutil
import subprocess

import docker
import pytest
from docker.tls import TLSConfig

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


@pytest.fixture(scope="module")
def engine(module_engine_starter, pki):
    proc = module_engine_starter(
        "-H",
        "unix://" + module_engine_starter.socket,
        "-H",
        "tcp://127.0.0.1:0",
        "--tlsverify",
        "--tlscacert",
        pki.server.ca,
        "--tlscert",
        pki.server.cert,
        "--tlskey",
        pki.server.key,
        "--label",
        "purpose=cli-test",
    )
    proc.sock = module_engine_starter.socket
    proc.port = proc.tcp_port()
    return proc


def run_docker(args, home, **env):
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),  # no user contexts or config leak in
    }
    base.update(env)
    return subprocess.run(["docker"] + args, env=base, capture_output=True, text=True, timeout=60)


def test_cli_version_over_unix(engine, tmp_path):
    out = run_docker(["version"], tmp_path, DOCKER_HOST="unix://" + engine.sock)
    assert out.returncode == 0, out.stderr
    assert "Server: dockyard engine" in out.stdout
    assert "0.1.0" in out.stdout.split("Server:")[1]
    fmt = run_docker(
        ["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"],
        tmp_path,
        DOCKER_HOST="unix://" + engine.sock,
    )
    assert fmt.returncode == 0 and fmt.stdout.strip() == "0.1.0 1.50"


def test_cli_version_and_info_over_tls(engine, pki, tmp_path):
    env = {
        "DOCKER_HOST": "tcp://127.0.0.1:%d" % engine.port,
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(pki.client.path),
    }
    out = run_docker(["version", "--format", "{{json .Server}}"], tmp_path, **env)
    assert out.returncode == 0, out.stderr
    server = json.loads(out.stdout)
    assert server["Version"] == "0.1.0" and server["ApiVersion"] == "1.50"

    info = run_docker(["info", "--format", "{{json .}}"], tmp_path, **env)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["ServerVersion"] == "0.1.0"
    assert data["NCPU"] == os.cpu_count()
    assert "purpose=cli-test" in data["Labels"]

    plain = run_docker(["info"], tmp_path, **env)
    assert plain.returncode == 0, plain.stderr
    assert "Server Version: 0.1.0" in plain.stdout


def test_cli_with_wrong_client_cert_fails(engine, pki, tmp_path):
    out = run_docker(
        ["version"],
        tmp_path,
        DOCKER_HOST="tcp://127.0.0.1:%d" % engine.port,
        DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(pki.other_ca_client.path),
    )
    assert out.returncode != 0
    assert "Server:" not in out.stdout or "0.1.0" not in out.stdout.split("Server:")[1]


def test_docker_py_over_tls(engine, pki, monkeypatch):
    # requests would trust these bundles instead of our ca.pem.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    tls = TLSConfig(client_cert=(pki.client.cert, pki.client.key), ca_cert=pki.client.ca, verify=True)
    client = docker.DockerClient(base_url="tcp://127.0.0.1:%d" % engine.port, tls=tls, version="auto")
    try:
        assert client.api.api_version == "1.50"  # negotiated from the unversioned GET /version
        assert client.ping() is True  # GET /v1.50/_ping
        version = client.version()
        assert version["Version"] == "0.1.0" and version["MinAPIVersion"] == "1.24"
        assert client.info()["ServerVersion"] == "0.1.0"
    finally:
        client.close()


def test_docker_py_over_unix(engine):
    client = docker.DockerClient(base_url="unix://" + engine.sock, version="auto")
    try:
        assert client.ping() is True
        assert client.version()["ApiVersion"] == "1.50"
        with pytest.raises(docker.errors.NotFound) as err:
            client.api.inspect_container("nothing")  # the engine's JSON 404 is parsed by docker-py
        assert "No such container: nothing" in str(err.value)
    finally:
        client.close()
