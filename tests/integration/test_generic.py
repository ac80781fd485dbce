"""End to end: `dockyard create -d generic` on real test hosts, then the real docker CLI over mutual TLS."""

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockyard import engine
from dockyard.provisioner.core import pki
from tests.integration.conftest import clean_env

pytestmark = pytest.mark.integration


def create_generic(dockyard, host, name, *extra, user="root"):
    return dockyard(
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        host.ip,
        "--generic-ssh-key",
        host.key_path,
        "--generic-ssh-user",
        user,
        *extra,
        name,
    )


def test_create_env_docker_version_ls_ssh_scp_rm(dockyard, make_host, tmp_path):
    host = make_host()
    out = create_generic(dockyard, host, "h1", "--engine-label", "spam=eggs", "--tls-san", "h1.example.test").stdout
    assert "Docker is up and running!" in out

    env = dockyard("env", "--shell", "bash", "h1").stdout
    assert f'export DOCKER_HOST="tcp://{host.ip}:2376"' in env
    assert 'export DOCKER_TLS_VERIFY="1"' in env
    assert f'export DOCKER_CERT_PATH="{dockyard.store}/machines/h1"' in env

    v = dockyard.docker("h1", "version", "--format", "{{json .Server}}").stdout
    assert json.loads(v)["Version"] == engine.__version__
    info = json.loads(dockyard.docker("h1", "info", "--format", "{{json .}}").stdout)
    assert "spam=eggs" in info["Labels"] and "provider=generic" in info["Labels"]
    assert info["Name"] == "h1"  # provisioning set the hostname

    ls = dockyard("ls").stdout.splitlines()
    assert ls[0].split() == ["NAME", "ACTIVE", "DRIVER", "STATE", "URL", "SWARM", "DOCKER", "ERRORS"]
    row = ls[1].split()
    assert row[:5] == ["h1", "-", "generic", "Running", f"tcp://{host.ip}:2376"]
    assert f"v{engine.__version__}" in row
    assert dockyard("ls", "-q", "--filter", "state=running").stdout.split() == ["h1"]
    assert dockyard("ls", "-q", "--filter", "label=spam=eggs").stdout.split() == ["h1"]
    assert dockyard("status", "h1").stdout.strip() == "Running"
    assert dockyard("ip", "h1").stdout.strip() == host.ip
    assert dockyard("url", "h1").stdout.strip() == f"tcp://{host.ip}:2376"
    assert dockyard("version", "h1").stdout.strip() == engine.__version__
    inspect = json.loads(dockyard("inspect", "h1").stdout)
    assert inspect["DriverName"] == "generic" and inspect["Certificates"]["Server"]["Expired"] is False
    assert dockyard("inspect", "-f", "{{.Driver.IPAddress}}", "h1").stdout.strip() == host.ip
    assert {"h1.example.test", host.ip, "h1", "localhost"} <= set(inspect["Certificates"]["Server"]["SANs"])

    # dockyard use: a docker context the docker CLI can select
    docker_config = tmp_path / "docker-config"
    out = dockyard("use", "h1", env={"DOCKER_CONFIG": str(docker_config)}).stdout
    assert "dockyard-h1" in out
    p = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({"DOCKER_CONFIG": str(docker_config)}),
    )
    assert p.returncode == 0 and p.stdout.strip() == engine.__version__, p.stderr

    # ssh: the remote exit code passes through, with both clients
    for flags in ([], ["--native-ssh"]):
        p = dockyard(*flags, "ssh", "h1", "--", "sh", "-c", "'echo out; exit 7'", check=False)
        assert p.returncode == 7, p.stderr
        assert "out" in p.stdout
        assert dockyard(*flags, "ssh", "h1", "--", "hostname").stdout.strip() == "h1"

    # scp both ways, a directory recursively
    src = tmp_path / "up.txt"
    src.write_text("payload\n")
    dockyard("scp", str(src), "h1:/tmp/up.txt")
    assert host.exec("cat /tmp/up.txt").stdout == "payload\n"
    dockyard("scp", "h1:/etc/hostname", str(tmp_path / "hn"))
    assert (tmp_path / "hn").read_text().strip() == "h1"
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("deep")
    dockyard("scp", "-r", str(tmp_path / "tree"), "h1:/tmp/")
    assert host.exec("cat /tmp/tree/sub/f").stdout == "deep"
    dockyard("scp", "-r", "h1:/tmp/tree", str(tmp_path / "back"))
    assert (tmp_path / "back" / "sub" / "f").read_text() == "deep"

    dockyard("rm", "-y", "h1")
    assert dockyard("ls", "-q").stdout.strip() == ""
    p = dockyard("env", "h1", check=False)
    assert p.returncode == 1 and 'Docker machine "h1" does not exist' in p.stderr


def _tls_handshake(host, port, ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(100)


def _expired_client_cert(store, out_dir):
    paths = pki.CertPaths(os.path.join(store, "certs"))
    ca_cert, ca_key = pki.load_cert(paths.ca), pki.load_key(paths.ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "expired")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(out_dir, "key.pem"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return os.path.join(out_dir, "cert.pem"), os.path.join(out_dir, "key.pem")


def test_tls_is_mutual_and_regenerate_certs_keeps_working(dockyard, make_host, tmp_path):
    host = make_host()
    create_generic(dockyard, host, "tls1")
    mdir = os.path.join(dockyard.store, "machines", "tls1")
    ca = os.path.join(mdir, "ca.pem")
    assert b"200 OK" in _tls_handshake(host.ip, 2376, ca, os.path.join(mdir, "cert.pem"), os.path.join(mdir, "key.pem"))

    # no client cert
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_handshake(host.ip, 2376, ca)
    # a client cert from another CA
    other = pki.CertPaths(str(tmp_path / "other"))
    pki.ensure_ca(other, log=lambda m: None)
    pki.ensure_client(other, log=lambda m: None)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_handshake(host.ip, 2376, ca, other.cert, other.key)
    # an expired client cert from the right CA
    cert, key = _expired_client_cert(dockyard.store, str(tmp_path / "expired"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_handshake(host.ip, 2376, ca, cert, key)
    # and the docker CLI itself refuses a foreign CA's client cert
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for n in ("ca.pem",):
        (foreign / n).write_bytes(open(os.path.join(mdir, n), "rb").read())
    (foreign / "cert.pem").write_bytes(open(other.cert, "rb").read())
    (foreign / "key.pem").write_bytes(open(other.key, "rb").read())
    p = subprocess.run(
        ["docker", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(
            {"DOCKER_HOST": f"tcp://{host.ip}:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(foreign)}
        ),
    )
    assert p.returncode != 0

    before = open(os.path.join(mdir, "server.pem")).read()
    pid_before = host.exec("cat /run/dockyard/engine.pid").stdout.strip()
    dockyard("regenerate-certs", "-f", "tls1")
    assert open(os.path.join(mdir, "server.pem")).read() != before
    assert host.exec("cat /etc/dockyard/server.pem").stdout == open(os.path.join(mdir, "server.pem")).read()
    assert host.exec("cat /run/dockyard/engine.pid").stdout.strip() != pid_before  # engine restarted
    dockyard.docker("tls1", "version")

    client_before = open(os.path.join(mdir, "cert.pem")).read()
    dockyard("regenerate-certs", "-f", "--client-certs", "tls1")
    assert open(os.path.join(mdir, "cert.pem")).read() != client_before
    dockyard.docker("tls1", "version")


def test_ip_not_in_cert_is_reported_and_fixed_by_provision(dockyard, make_host):
    host = make_host()
    create_generic(dockyard, host, "ipc")
    mdir = os.path.join(dockyard.store, "machines", "ipc")
    # What a DHCP address change leaves behind: a server cert for another address.
    paths = pki.CertPaths(os.path.join(dockyard.store, "certs"))
    pki.issue_server_cert(
        paths,
        "ipc",
        os.path.join(mdir, "server.pem"),
        os.path.join(mdir, "server-key.pem"),
        pki.server_sans("10.231.255.254", "ipc"),
    )
    p = dockyard("env", "ipc", check=False)
    assert p.returncode == 1
    assert f"the machine's IP is now {host.ip}" in p.stderr and "dockyard provision ipc" in p.stderr
    assert "IP changed" in dockyard("ls").stdout
    dockyard("provision", "ipc")
    assert pki.cert_covers(os.path.join(mdir, "server.pem"), host.ip)
    dockyard.docker("ipc", "version")


def test_non_root_user_with_sudo_and_systemd_host(dockyard, make_host):
    host = make_host(systemd=True)
    create_generic(dockyard, host, "sd1", user="tester")
    assert host.exec("systemctl is-active dockyard-engine.service").stdout.strip() == "active"
    dockyard.docker("sd1", "version")
    inspect = json.loads(dockyard("inspect", "sd1").stdout)
    assert inspect["Provisioned"]["Init"] == "systemd"
    # upgrade and provision keep the service up
    dockyard("upgrade", "sd1")
    dockyard("provision", "sd1")
    dockyard.docker("sd1", "info")


def test_sudo_password_required_is_a_clear_error(dockyard, make_host):
    host = make_host()
    p = dockyard(
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        host.ip,
        "--generic-ssh-key",
        host.key_path,
        "--generic-ssh-user",
        "pwuser",
        "pw",
        check=False,
    )
    assert p.returncode == 1
    assert "sudo" in p.stderr and "password" in p.stderr
    assert "Traceback" not in p.stderr
    ls = dockyard("ls").stdout
    assert "pw" in ls and "Error" in ls
    dockyard("rm", "-f", "pw")
    assert dockyard("ls", "-q").stdout.strip() == ""


def test_parallel_creates_share_one_ca(dockyard, make_host):
    a, b = make_host(), make_host()
    procs = [
        dockyard.popen("create", "-d", "generic", "--generic-ip-address", h.ip, "--generic-ssh-key", h.key_path, n)
        for h, n in ((a, "pa"), (b, "pb"))
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    dockyard.docker("pa", "version")
    dockyard.docker("pb", "version")
    rows = dockyard("ls", "--format", "{{.Name}} {{.State}}").stdout.split("\n")
    assert rows[:2] == ["pa Running", "pb Running"]


def test_killed_create_then_rm_force(dockyard, make_host):
    host = make_host()
    p = dockyard.popen(
        "create", "-d", "generic", "--generic-ip-address", host.ip, "--generic-ssh-key", host.key_path, "k1"
    )
    config = os.path.join(dockyard.store, "machines", "k1", "config.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.load(open(config)).get("Status", {}).get("Step") == "provisioning":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    row = dockyard("ls", "--format", "{{.Name}}|{{.State}}|{{.Error}}").stdout.strip()
    assert row.startswith("k1|Error|"), row
    assert "interrupted" in row
    dockyard("rm", "-f", "k1")
    assert not os.path.exists(os.path.join(dockyard.store, "machines", "k1"))
    # the name is free again
    create_generic(dockyard, host, "k1")
    dockyard.docker("k1", "version")


def test_changed_host_key_is_refused(dockyard, make_host):
    host = make_host()
    create_generic(dockyard, host, "hk")
    host.regenerate_host_key()
    for flags in ([], ["--native-ssh"]):
        p = dockyard(*flags, "ssh", "hk", "--", "true", check=False)
        assert p.returncode != 0
    p = dockyard("--native-ssh", "ssh", "hk", "--", "true", check=False)
    assert "changed" in p.stderr.lower() and "Traceback" not in p.stderr
    p = dockyard("provision", "hk", check=False)
    assert p.returncode == 1 and "changed" in p.stderr.lower()
