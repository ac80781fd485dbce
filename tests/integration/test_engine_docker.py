"""End to end: `dockyard create -d generic --engine docker` on a test host whose rootfs has Debian's docker.io,
then the real docker CLI and docker-py over mutual TLS, regenerate-certs with a running container, rm."""

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest
from cryptography import x509

from tests import images
from tests.hosts import netns_host
from tests.hosts import rootfs as rootfs_build
from tests.hosts.lab import Lab
from tests.integration.conftest import ROOT, Dockyard, clean_env, docker_py

pytestmark = pytest.mark.integration


class DockerDockyard(Dockyard):
    """The fixture's runner without --engine-opt registry-pull=local: that is a dockyard-engine option and
    dockerd would refuse it (test hosts have no route out anyway)."""

    def argv(self, *args):
        argv = super().argv(*args)
        for i in range(len(argv) - 1):
            if argv[i] == "--engine-opt" and argv[i + 1] == "registry-pull=local":
                del argv[i : i + 2]
                break
        return argv


@pytest.fixture(scope="module")
def docker_rootfs():
    if os.geteuid() != 0:
        pytest.skip("test hosts need root (network namespaces, overlay mounts)")
    missing = [t for t in ("mmdebstrap", "nsenter", "unshare", "ip", "mount", "docker") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: run .ci/hosts-deps.sh")
    netns_host.cleanup_stale()
    return rootfs_build.ensure_rootfs(variant="docker")


@pytest.fixture(params=[False, True], ids=["no-init-host", "systemd-host"])
def docker_host(docker_rootfs, request):
    """A host on the docker rootfs: sshd as PID 1 (dockerd run by dockyard's control script), or booted by
    systemd-nspawn (dockerd run by Debian's docker.service with dockyard's drop-in)."""
    if request.param and not shutil.which("systemd-nspawn"):
        pytest.skip("systemd hosts need systemd-nspawn: run .ci/hosts-deps.sh")
    host = netns_host.TestHost(docker_rootfs, name="dk1", systemd=request.param)
    try:
        yield host.start()
    finally:
        host.teardown()


@pytest.fixture
def dockyard(tmp_path):
    d = DockerDockyard(tmp_path / "store")
    yield d
    d.remove_cgroups()


def _tls_ping(host, port, ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(100), tls.getpeercert(binary_form=True)


def _dockerd_pid(host):
    return host.exec("cat /var/run/docker.pid", check=True).stdout.strip()


def test_engine_docker_on_generic_host(dockyard, docker_host, monkeypatch, tmp_path):
    host = docker_host
    out = dockyard(
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        host.ip,
        "--generic-ssh-key",
        host.key_path,
        "--engine",
        "docker",
        "--engine-label",
        "spam=eggs",
        "--engine-env",
        "DOCKYARD_TEST_ENV=hello world",
        "--engine-insecure-registry",
        "10.231.255.1:5000",
        "h1",
    ).stdout
    assert "Using the host's Docker Engine (/usr/sbin/dockerd)" in out
    assert "Docker is up and running!" in out
    mdir = os.path.join(dockyard.store, "machines", "h1")
    config = json.load(open(os.path.join(mdir, "config.json")))
    assert config["HostOptions"]["Engine"] == "docker"

    # The docker CLI over TLS, pointed by `dockyard env`: it is Docker's own engine, with the machine's settings.
    server = json.loads(dockyard.docker("h1", "version", "--format", "{{json .Server}}").stdout)
    assert server["Version"].startswith("20.10.")
    info = json.loads(dockyard.docker("h1", "info", "--format", "{{json .}}").stdout)
    assert "spam=eggs" in info["Labels"] and "provider=generic" in info["Labels"]
    assert info["Name"] == "h1" and info["LiveRestoreEnabled"] is True and info["Driver"] == "overlay2"
    assert "10.231.255.1:5000" in json.dumps(info["RegistryConfig"])
    environ = (host.rootfs_dir / "proc" / _dockerd_pid(host) / "environ").read_bytes().split(b"\0")
    assert b"DOCKYARD_TEST_ENV=hello world" in environ
    if host.systemd:  # Debian's unit with dockyard's drop-in, using the distribution's containerd
        assert host.exec("systemctl is-active docker.service").stdout.strip() == "active"
        cmdline = (host.rootfs_dir / "proc" / _dockerd_pid(host) / "cmdline").read_bytes().split(b"\0")
        assert b"--containerd=/run/containerd/containerd.sock" in cmdline
    # dockerd also serves the unix socket on the host
    assert host.exec("docker -H unix:///var/run/docker.sock info --format '{{.Name}}'").stdout.strip() == "h1"

    # ls shows Docker's version; inspect and ssh work as for the dockyard engine
    row = dockyard("ls").stdout.splitlines()[1].split()
    assert row[:5] == ["h1", "-", "generic", "Running", f"tcp://{host.ip}:2376"]
    assert f"v{server['Version']}" in row
    assert dockyard("version", "h1").stdout.strip() == server["Version"]
    assert json.loads(dockyard("inspect", "h1").stdout)["DriverName"] == "generic"
    assert dockyard("ssh", "h1", "cat", "/etc/hostname").stdout.strip() == "h1"

    # Containers run on the sshd host only: systemd-nspawn mounts this machine's cgroup v1 controllers
    # read-only, so runc cannot make a container's cgroups on the systemd host (dockerd itself runs fine).
    containers = not host.systemd
    client = docker_py(dockyard, "h1", monkeypatch)
    try:
        assert client.version()["Version"] == server["Version"]
        if containers:
            # busybox from tests/images.py, loaded with `docker load`, run with the docker CLI and docker-py
            dockyard.docker("h1", "load", "-i", str(images.busybox_tar()), timeout=300)
            dockyard.docker("h1", "run", "--rm", "busybox", "true")
            assert client.containers.run("busybox", ["echo", "from docker-py"], remove=True) == b"from docker-py\n"
    finally:
        client.close()

    # mutual TLS: no client cert, no answer
    ca, cert, key = (os.path.join(mdir, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    body, old_server_cert = _tls_ping(host.ip, 2376, ca, cert, key)
    assert b"200 OK" in body
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_ping(host.ip, 2376, ca)

    # regenerate-certs: the new cert reaches dockerd, which restarts without stopping the running container
    if containers:
        dockyard.docker("h1", "run", "-d", "--name", "keep", "busybox", "sleep", "3600")
        before = json.loads(dockyard.docker("h1", "inspect", "keep").stdout)[0]["State"]
    old_pid = _dockerd_pid(host)
    dockyard("regenerate-certs", "-f", "h1")
    assert _dockerd_pid(host) != old_pid
    body, new_server_cert = _tls_ping(host.ip, 2376, ca, cert, key)
    assert b"200 OK" in body and new_server_cert != old_server_cert
    assert x509.load_der_x509_certificate(new_server_cert) == x509.load_pem_x509_certificate(
        open(os.path.join(mdir, "server.pem"), "rb").read()
    )
    if containers:
        after = json.loads(dockyard.docker("h1", "inspect", "keep").stdout)[0]["State"]
        assert after["Running"] and after["Pid"] == before["Pid"] and after["StartedAt"] == before["StartedAt"]

    # provision keeps the engine choice (and the container)
    dockyard("provision", "h1")
    assert dockyard("version", "h1").stdout.strip() == server["Version"]
    assert json.load(open(os.path.join(mdir, "config.json")))["HostOptions"]["Engine"] == "docker"
    if containers:
        assert json.loads(dockyard.docker("h1", "inspect", "keep").stdout)[0]["State"]["Pid"] == before["Pid"]

    # upgrade = the package manager's upgrade of the package that owns dockerd (docker.io here; the test host has
    # no route out, so apt finds nothing newer), then a restart that keeps the container
    old_pid = _dockerd_pid(host)
    out = dockyard("upgrade", "h1", timeout=300).stdout
    assert "Upgrading Docker Engine with the host's package manager..." in out
    assert _dockerd_pid(host) != old_pid and dockyard("version", "h1").stdout.strip() == server["Version"]
    if containers:
        assert json.loads(dockyard.docker("h1", "inspect", "keep").stdout)[0]["State"]["Pid"] == before["Pid"]
        dockyard.docker("h1", "rm", "-f", "keep")
    assert "Successfully removed h1" in dockyard("rm", "-y", "h1").stdout
    assert not os.path.exists(mdir)
    assert dockyard("ls", "-q").stdout.strip() == ""


def test_engine_docker_refuses_dockyard_only_and_owned_options(dockyard, tmp_path):
    p = dockyard(
        "create", "-d", "generic", "--generic-ip-address", "10.231.255.9", "--engine", "docker",
        "--engine-opt", "tlsverify=false", "x1", check=False,
    )  # fmt: skip
    assert p.returncode != 0 and "dockyard sets tlsverify for Docker Engine" in p.stderr
    assert not os.path.exists(os.path.join(dockyard.store, "machines", "x1"))
    p = subprocess.run(
        [*Dockyard.argv(dockyard, "create", "-d", "generic", "--generic-ip-address", "10.231.255.9"),
         "--engine", "docker", "x2"],
        capture_output=True, text=True, check=False, env=clean_env(), cwd=ROOT,
    )  # fmt: skip
    assert p.returncode != 0 and "registry-pull is an option of the dockyard engine" in p.stderr


# --- swarm mode --------------------------------------------------------------------------------------------------
def _create_node(dockyard, host, name, *swarm_flags):
    return dockyard(
        "create", "-d", "generic", "--generic-ip-address", host.ip, "--generic-ssh-key", host.key_path,
        "--engine", "docker", *swarm_flags, name, timeout=300,
    ).stdout  # fmt: skip


def _wait(what, check, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def _nodes(dockyard, via):
    out = dockyard.docker(via, "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}}").stdout
    return sorted(tuple(line.split()) for line in out.splitlines())


def _running_tasks(dockyard, via, service):
    out = dockyard.docker(via, "service", "ps", service, "--filter", "desired-state=running", "--format",
                          "{{.Node}} {{.CurrentState}}").stdout  # fmt: skip
    return [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["Running"]]


STACK = """\
version: "3.8"
services:
  app:
    image: busybox:latest
    command: ["sleep", "3600"]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
"""


def _service(dockyard, name, *args):
    dockyard.docker("m1", "service", "create", "--detach", "--name", name, "--endpoint-mode", "dnsrr",
                    "--no-resolve-image", *_split_service_args(args), timeout=180)  # fmt: skip


def _split_service_args(args):
    """Options first, then the image, then the command: args are options up to the first non-option word."""
    i = 0
    while i < len(args) and args[i].startswith("--"):
        i += 2
    return [*args[:i], "busybox:latest", *args[i:]]


def _http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read()
    except OSError:
        return None


def test_swarm_master_workers_ls_env_rm(dockyard, docker_rootfs, tmp_path):
    with Lab() as lab:
        m1, w1, w2 = (lab.host(docker_rootfs, n) for n in ("m1", "w1", "w2"))
        out = _create_node(dockyard, m1, "m1", "--swarm-master")
        assert f"Initializing a swarm with this machine as its manager (advertise address {m1.ip})" in out
        if not os.path.isdir("/sys/module/ip_vs"):
            assert "WARNING: the kernel of m1 has no ip_vs" in out
        for host, name in ((w1, "w1"), (w2, "w2")):
            assert "Joining the swarm of" in _create_node(dockyard, host, name, "--swarm", "--swarm-join", "m1")
        # the join token was read at join time and is stored nowhere
        token = dockyard.docker("m1", "swarm", "join-token", "-q", "worker").stdout.strip()
        for name in ("m1", "w1", "w2"):
            assert token not in open(os.path.join(dockyard.store, "machines", name, "config.json")).read()
        assert _wait("3 ready nodes", lambda: [n[1] for n in _nodes(dockyard, "m1")] == ["Ready"] * 3)

        # ls shows the swarm as Docker Machine showed the master; filter and env --swarm
        rows = {r.split()[0]: r for r in dockyard("ls").stdout.splitlines()[1:]}
        assert "m1 (manager)" in rows["m1"] and " m1 " in rows["w1"] and "(manager)" not in rows["w1"]
        assert dockyard("ls", "-q", "--filter", "swarm=m1").stdout.split() == ["m1", "w1", "w2"]
        env = dockyard("env", "--shell", "bash", "--swarm", "w1").stdout
        assert f'export DOCKER_HOST="tcp://{m1.ip}:2376"' in env

        # a service spreads over all three nodes (dnsrr: this kernel has no IPVS for virtual IPs)
        for name in ("m1", "w1", "w2"):
            dockyard.docker(name, "load", "-i", str(images.busybox_tar()), timeout=300)
        dockyard.docker(
            "m1", "service", "create", "--detach", "--name", "spread", "--replicas", "6", "--endpoint-mode", "dnsrr",
            "--no-resolve-image", "busybox:latest", "sleep", "3600", timeout=180,
        )  # fmt: skip
        tasks = _wait("6 running tasks", lambda: (t := _running_tasks(dockyard, "m1", "spread")) and len(t) == 6 and t)
        assert set(tasks) == {"m1", "w1", "w2"}

        # two services on an overlay network reach each other by service name across nodes (over VXLAN), through
        # Docker's embedded DNS: each task's resolv.conf names 127.0.0.11, and `web` / `cli` resolve to the other
        # node's task (dnsrr: the task addresses themselves)
        dockyard.docker("m1", "network", "create", "-d", "overlay", "appnet")
        httpd = "mkdir -p /www && echo hello-from-{} > /www/index.html && exec httpd -f -p 80 -h /www"
        _service(dockyard, "web", "--network", "appnet", "--constraint", "node.hostname==w1", "sh", "-c",
                 httpd.format("web"))  # fmt: skip
        _service(dockyard, "cli", "--network", "appnet", "--constraint", "node.hostname==w2", "sh", "-c",
                 httpd.format("cli"))  # fmt: skip
        _wait("web and cli running", lambda: _running_tasks(dockyard, "m1", "web") == ["w1"]
              and _running_tasks(dockyard, "m1", "cli") == ["w2"])  # fmt: skip
        tasks = {}
        for service, node in (("web", "w1"), ("cli", "w2")):
            ids = dockyard.docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
            cid = ids.stdout.split()[0]
            networks = json.loads(dockyard.docker(node, "inspect", cid).stdout)[0]["NetworkSettings"]["Networks"]
            tasks[service] = (node, cid, networks["appnet"]["IPAddress"])
            resolv = dockyard.docker(node, "exec", cid, "cat", "/etc/resolv.conf").stdout
            assert "nameserver 127.0.0.11" in resolv, resolv
        for src, dst in (("cli", "web"), ("web", "cli")):
            node, cid, _ = tasks[src]
            answer = _wait(f"{dst} resolved in {src}'s task", lambda: dockyard.docker(
                node, "exec", cid, "nslookup", dst, check=False).stdout)  # fmt: skip
            assert tasks[dst][2] in answer, answer
            # busybox nc, not wget: this static busybox's wget dies of SIGSEGV under dockerd (also by address)
            get = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {dst} 80"
            got = _wait(f"http://{dst}/ from {src}'s task on {node}", lambda: dockyard.docker(
                node, "exec", cid, "sh", "-c", get, check=False).stdout)  # fmt: skip
            assert got.startswith("HTTP/1.") and got.rstrip().endswith(f"hello-from-{dst}"), got

        # a host-mode published port answers on the node that runs the task, and only there
        _service(dockyard, "pub", "--publish", "mode=host,target=80,published=8080", "--constraint",
                 "node.hostname==w2", "sh", "-c", httpd.format("pub"))  # fmt: skip
        body = _wait("port 8080 on w2", lambda: _http_get(f"http://{w2.ip}:8080/"))
        assert body.strip() == b"hello-from-pub" and _http_get(f"http://{m1.ip}:8080/") is None

        # docker stack deploy of a compose file
        compose = tmp_path / "stack.yml"
        compose.write_text(STACK)
        dockyard.docker("m1", "stack", "deploy", "--resolve-image", "never", "-c", str(compose), "st", timeout=180)
        _wait("the stack's 2 tasks", lambda: len(_running_tasks(dockyard, "m1", "st_app")) == 2)

        # a worker's engine is killed: its tasks are rescheduled on the other nodes; then it comes back
        w1.exec("kill -9 $(cat /var/run/docker.pid)", check=True)
        _wait("w1 down", lambda: ("w1", "Down", "Active") in _nodes(dockyard, "m1"))
        _wait("spread rescheduled off w1", lambda: (t := _running_tasks(dockyard, "m1", "spread")) and len(t) == 6
              and "w1" not in t)  # fmt: skip
        w1.exec("/usr/local/lib/dockyard/dockerd-ctl start", check=True)
        _wait("3 ready nodes", lambda: [n[1] for n in _nodes(dockyard, "m1")] == ["Ready"] * 3)
        dockyard.docker("m1", "stack", "rm", "st")
        dockyard.docker("m1", "service", "rm", "web", "cli", "pub")

        # regenerate-certs on the manager: dockerd restarts with the new cert, the swarm keeps running (swarm
        # nodes run without live-restore, which dockerd refuses in swarm mode: the swarm restarts m1's tasks)
        dockyard("regenerate-certs", "-f", "m1")
        assert _wait("3 ready nodes", lambda: [n[1] for n in _nodes(dockyard, "m1")] == ["Ready"] * 3)
        _wait("6 running tasks", lambda: len(_running_tasks(dockyard, "m1", "spread")) == 6)

        # the last manager is not removed while workers depend on it
        p = dockyard("rm", "-y", "m1", check=False)
        assert p.returncode != 0 and "last manager" in p.stderr
        # rm of a worker: drained (its tasks move), leaves, and is gone from the node list
        assert "Draining the swarm node" in dockyard("rm", "-y", "w2").stdout
        assert [n[0] for n in _nodes(dockyard, "m1")] == ["m1", "w1"]
        tasks = _wait("6 running tasks on m1, w1", lambda: (t := _running_tasks(dockyard, "m1", "spread")) and
                      len(t) == 6 and set(t) <= {"m1", "w1"} and t)  # fmt: skip
        assert w2.exec("docker info --format '{{.Swarm.LocalNodeState}}'").stdout.strip() == "inactive"

        # an extra manager (--swarm-manager) on w2's host: shown as a manager, then demoted, drained and removed
        out = _create_node(dockyard, w2, "m2", "--swarm", "--swarm-join", "m1", "--swarm-manager")
        assert "as a manager" in out
        _wait("m2 ready", lambda: ("m2", "Ready", "Active") in _nodes(dockyard, "m1"))
        assert "m1 (manager)" in next(r for r in dockyard("ls").stdout.splitlines() if r.startswith("m2 "))
        assert dockyard.docker("m2", "node", "ls", "-q").stdout.split()  # m2 answers as a manager
        assert "Demoting the manager to a worker" in dockyard("rm", "-y", "m2").stdout
        assert [n[0] for n in _nodes(dockyard, "m1")] == ["m1", "w1"]

        # a machine made earlier without swarm flags joins with `dockyard swarm join` and leaves again
        _create_node(dockyard, w2, "x2")
        assert json.loads(dockyard.docker("x2", "info", "--format", "{{json .}}").stdout)["LiveRestoreEnabled"]
        dockyard("swarm", "join", "x2", "--to", "m1")
        _wait("x2 ready", lambda: ("x2", "Ready", "Active") in _nodes(dockyard, "m1"))
        assert dockyard("ls", "-q", "--filter", "swarm=m1").stdout.split() == ["m1", "w1", "x2"]
        dockyard("swarm", "leave", "x2")
        assert [n[0] for n in _nodes(dockyard, "m1")] == ["m1", "w1"]
        info = json.loads(dockyard.docker("x2", "info", "--format", "{{json .}}").stdout)
        assert info["Swarm"]["LocalNodeState"] == "inactive" and info["LiveRestoreEnabled"]
        dockyard("rm", "-y", "x2")

        dockyard.docker("m1", "service", "rm", "spread")
        dockyard("rm", "-y", "w1")
        dockyard("rm", "-y", "-f", "m1")
        assert dockyard("ls", "-q").stdout.strip() == ""


def test_classic_swarm_flags_are_refused_with_what_replaced_them(dockyard):
    for flag, words in (("--swarm-discovery", "--swarm-join MANAGER"), ("--swarm-image", "no swarm image"),
                        ("--swarm-strategy", "placement constraints")):  # fmt: skip
        p = dockyard("create", "-d", "generic", "--generic-ip-address", "10.231.255.9", "--engine", "docker",
                     flag, "x", "x1", check=False)  # fmt: skip
        assert p.returncode != 0 and "belongs to classic Swarm" in p.stderr and words in p.stderr
    p = dockyard("create", "-d", "generic", "--generic-ip-address", "10.231.255.9", "--swarm-master", "x1", check=False)
    assert p.returncode != 0 and "add --engine docker" in p.stderr
