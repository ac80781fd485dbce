"""First run as a new user does it: `dockyard create` with no driver, no name and no flags makes a qemu machine
called "default" from Debian's cloud image, here served from 127.0.0.1 (a stand-in built from the cached test
guest image, booting through its own loader like Debian's, published under Debian's name with a SHA512SUMS).
The image is downloaded into an empty cache, verified, booted with cloud-init; progress shows the download,
the boot stages and provisioning; then `eval "$(dockyard env)"` and docker run work, and rm leaves nothing.

Network safety: the VM has qemu user-mode networking with restrict=on (QEMU_RESTRICT, an environment
variable, so the command line stays flag-free); the test talks only to 127.0.0.1. One VM, torn down on failure.
"""

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from dockyard.drivers.guestimage import debian
from dockyard.drivers.qemu import accel
from dockyard.drivers.qemu.driver import process_alive
from tests.images import busybox_tar
from tests.integration import local_image
from tests.integration.test_qemu_vm import CACHE, ensure_guest_image, machine_config, qemu_pid

pytestmark = [pytest.mark.vm, pytest.mark.integration]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_server():
    missing = local_image.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: run .ci/vm-deps.sh")
    image = ensure_guest_image(lambda m: None)
    out = os.path.join(CACHE, "debian-like-" + os.path.basename(os.path.dirname(image.disk)))
    local_image.build_like_debian(image, out)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=out))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield image, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def accel_for(image):
    """auto, unless KVM runs the firmware but not a kernel here (then auto would pick a KVM that hangs)."""
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    with_kernel = accel.probe(qemu, image.kernel, CACHE)
    return "tcg" if not with_kernel.usable and accel.firmware_check(qemu).usable else "auto"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindable(port, kind=socket.SOCK_STREAM):
    """Free for a new listener (connections of the forward that linger in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:  # (for UDP it would let us share QEMU's port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def ports_state(mdir):
    try:
        with open(os.path.join(mdir, "ports.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def forwarder_pid(mdir):
    with open(os.path.join(mdir, "portfwd.pid")) as f:
        return int(f.read())


def fetch(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            return r.read()
    except OSError:
        return None


def check_published_ports(dockyard, mdir):
    """-p answers on the laptop's 127.0.0.1 (TCP, UDP) as the container starts, goes when it stops; a port
    another program holds is a warning in the forwarder's log and ports.json."""
    tcp, udp = free_port(), free_port()
    web = dockyard.docker(
        "default",
        *("run", "-d", "--name", "web", "-p", f"{tcp}:8080", "-p", f"{udp}:9999/udp", "busybox"),
        *("sh", "-c", "echo published > /tmp/index.html && exec busybox httpd -f -p 8080 -h /tmp"),
    )
    assert web.returncode == 0

    assert wait_for("the published port on 127.0.0.1", lambda: fetch(tcp)) == b"published\n"
    assert ports_state(mdir)["Forwarded"] == {f"{tcp}/tcp": "web", f"{udp}/udp": "web"}
    assert not bindable(udp, socket.SOCK_DGRAM)

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        dockyard.docker("default", "run", "-d", "--name", "busy", "-p", f"{taken}:8080", "busybox", "sleep", "600")
        wait_for("the conflict", lambda: ports_state(mdir).get("Conflicts") == {f"{taken}/tcp": "busy"})
        shown = json.loads(dockyard("inspect", "-f", "{{json .PublishedPorts}}").stdout)
        assert shown["Conflicts"] == {f"{taken}/tcp": "busy"} and f"{tcp}/tcp" in shown["Forwarded"]
        with open(os.path.join(mdir, "portfwd.log")) as f:
            assert f"Warning: cannot forward 127.0.0.1:{taken}/tcp to container busy" in f.read()
    finally:
        holder.close()
    dockyard.docker("default", "rm", "-f", "web", "busy")
    wait_for("the forwards to go", lambda: ports_state(mdir) == {"Forwarded": {}, "Conflicts": {}})
    assert bindable(tcp) and bindable(udp, socket.SOCK_DGRAM)


def test_first_run_makes_default_from_debians_cloud_image(dockyard, image_server, tmp_path):
    image, base = image_server
    cache = str(tmp_path / "images")
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    (home / "proj" / "f.txt").write_text("from the laptop\n")
    env = {
        "HOME": str(home),
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        debian.URL_BASE_ENV: base,
        "DOCKYARD_IMAGE_CACHE": cache,
        "QEMU_RESTRICT": "1",
        "QEMU_MEMORY": "1024",
        "QEMU_ACCEL": accel_for(image),
    }
    try:
        r = dockyard("create", env=env, timeout=900)
        out = r.stdout + r.stderr
        assert f"Downloading {base}{debian.image_filename('amd64')}" in out
        assert "Verified against SHA512SUMS" in out
        for stage in ("firmware started", "kernel started", "cloud-init running", "SSH answers", "logged in"):
            assert f"Boot: {stage}" in out, out
        assert "Docker is up and running!" in out

        cfg = machine_config(dockyard, "default")
        assert cfg["DriverName"] == "qemu"
        drv = cfg["Driver"]
        assert drv["BaseImage"]["disk"].startswith(os.path.join(cache, "debian", "sha512-"))
        assert not drv.get("Cmdline")  # booted by the firmware through the image's own loader
        assert drv["ImageURLBase"] == base and drv["AccelUsed"] in ("kvm", "tcg")

        assert dockyard("ls", "-q").stdout.split() == ["default"]
        # the docker context made by create reaches the same engine
        via_context = subprocess.run(
            ["docker", "--context", "dockyard-default", "version", "--format", "{{.Server.Os}}"],
            capture_output=True,
            text=True,
            env=dict(os.environ, DOCKER_CONFIG=env["DOCKER_CONFIG"]),
            timeout=60,
        )
        assert via_context.stdout.strip() == "linux", via_context.stderr
        assert dockyard("status").stdout.strip() == "Running"  # no name: "default"
        env_out = dockyard("env", "--shell", "bash").stdout
        assert f'DOCKER_HOST="tcp://127.0.0.1:{drv["EngineHostPort"]}"' in env_out
        assert dockyard.docker("default", "load", "-i", str(busybox_tar()), timeout=300).returncode == 0
        assert dockyard.docker("default", "run", "--rm", "busybox", "echo", "hello", timeout=300).stdout == "hello\n"
        check_published_ports(dockyard, os.path.join(dockyard.store, "machines", "default"))

        # the home directory is in the VM at the same path: -v $PWD:/app sees the laptop's files, both ways, at once
        assert drv["Shares"] == [{"Path": str(home), "Tag": "share0", "ReadOnly": False}]
        assert f"Sharing {home} with the machine" in out
        app = f"{home}/proj:/app"
        assert dockyard.docker("default", "run", "--rm", "-v", app, "busybox", "cat", "/app/f.txt").stdout == (
            "from the laptop\n"
        )
        (home / "proj" / "f.txt").write_text("changed on the laptop\n")
        assert dockyard.docker("default", "run", "--rm", "-v", app, "busybox", "cat", "/app/f.txt").stdout == (
            "changed on the laptop\n"
        )
        dockyard.docker("default", "run", "--rm", "-v", app, "busybox", "sh", "-c", "echo from the vm > /app/g.txt")
        assert (home / "proj" / "g.txt").read_text() == "from the vm\n"

        # after a stop and start: the share comes back from fstab and ports are forwarded by a new forwarder
        mdir = os.path.join(dockyard.store, "machines", "default")
        first = forwarder_pid(mdir)
        assert process_alive(first, "dockyard.drivers.qemu.portfwd")
        dockyard("stop", timeout=300)
        assert not process_alive(first)
        dockyard("start", timeout=600)
        assert dockyard.docker("default", "run", "--rm", "-v", app, "busybox", "cat", "/app/g.txt").stdout == (
            "from the vm\n"
        )
        port = free_port()
        dockyard.docker(
            "default",
            *("run", "-d", "--name", "again", "-p", f"{port}:8080", "busybox"),
            *("sh", "-c", "echo again > /tmp/index.html && exec busybox httpd -f -p 8080 -h /tmp"),
        )
        assert wait_for("a port after restart", lambda: fetch(port)) == b"again\n"

        pid = qemu_pid(dockyard, "default")
        forwarder = forwarder_pid(mdir)
        assert process_alive(forwarder, "dockyard.drivers.qemu.portfwd") and forwarder != first
        dockyard("rm", "-y", "default", timeout=120, env={"DOCKER_CONFIG": env["DOCKER_CONFIG"]})
        gone = subprocess.run(
            ["docker", "context", "inspect", "dockyard-default"],
            capture_output=True,
            env=dict(os.environ, DOCKER_CONFIG=env["DOCKER_CONFIG"]),
        )
        assert gone.returncode != 0
        assert not os.path.exists(os.path.join(dockyard.store, "machines", "default")) and not process_alive(pid)
        assert not process_alive(forwarder)
        assert os.listdir(os.path.join(cache, "debian"))  # the verified image stays cached
    finally:
        pid = qemu_pid(dockyard, "default")
        if pid:  # a failed step must not leave a VM running
            dockyard("rm", "-f", "-y", "default", check=False, timeout=120)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cache, ignore_errors=True)
