"""An in-process engine serving only the image, volume and file-copy resources, for the real CLI and docker-py.

The stores are the real ones on a real data-root; only the container runtime is
replaced, by `Containers`: a registry of rootfs-backed "containers" whose
processes (if any) are real processes chrooted into the overlay rootfs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import cast

import pytest

from dockyard.engine.api import auth, filecopy, images, system, volumes
from dockyard.engine.api.http import HttpServer
from dockyard.engine.api.router import Router
from dockyard.engine.api.routes import common_headers
from dockyard.engine.config import Config
from dockyard.engine.errors import NotFound
from dockyard.engine.images.store import ImageStore
from dockyard.engine.network.manager import NetworkManager
from dockyard.engine.runtime.manager import ContainerManager
from dockyard.engine.services import Engine
from dockyard.engine.volumes import VolumeStore


class Ctr:
    def __init__(self, cid, name, rootfs, image_id):
        self.id, self.name, self.rootfs, self.image_id = cid, name, rootfs, image_id
        self.pid = 0
        self.state = {}  # as Container.state; no PidStartTime recorded: the PID alone names the process
        self.proc = None
        self.host_config = {}


class Containers:
    """Stand-in for the runtime's ContainerManager: get(ref), plus create/start/stop for tests."""

    def __init__(self, images):
        self.images = images
        self.items: dict[str, Ctr] = {}

    def get(self, ref):
        for c in self.items.values():
            if ref in (c.id, c.name) or (len(ref) >= 3 and c.id.startswith(ref)):
                return c
        raise NotFound(f"No such container: {ref}")

    def create(self, name, image_ref):
        store = self.images
        img = store.get(image_ref)
        cid = os.urandom(32).hex()
        merged = store.mount_rootfs(cid, img)
        c = Ctr(cid, name, merged, img.id)
        self.items[cid] = c
        return c

    def start(self, c, *argv):
        """A real process in its own mount namespace, chrooted into the rootfs."""
        c.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "chroot", c.rootfs, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # unshare execs chroot which execs argv: the pid stays the same.
        c.pid = c.proc.pid
        deadline = 200
        while deadline and os.readlink(f"/proc/{c.pid}/root") != c.rootfs:
            threading.Event().wait(0.01)
            deadline -= 1

    def stop(self, c):
        if c.proc is not None:
            c.proc.kill()
            c.proc.wait()
        c.pid, c.proc = 0, None

    def is_running(self, container_id):
        c = self.items.get(container_id)
        return c is not None and bool(c.pid)

    def counts(self):
        return {"Containers": len(self.items)}

    def users_of_image(self, image_id):
        return [c.id for c in self.items.values() if c.image_id == image_id]

    def remove(self, c):
        self.stop(c)
        self.images.remove_rootfs(c.id)
        del self.items[c.id]


class ImagesEngine:
    """Serves HTTP on a unix socket in this process; .env for the docker CLI, .client() for docker-py."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.data_root = str(directory / "data")
        os.makedirs(self.data_root, exist_ok=True)
        self.socket_path = str(directory / "engine.sock")
        image_store = ImageStore(self.data_root)
        self.containers = Containers(image_store)
        image_store.set_usage_check(self.containers.users_of_image)
        image_store.set_running_check(self.containers.is_running)
        warnings: list[str] = []
        network = NetworkManager(self.data_root, {}, warnings)  # unused by these resources; cheap to build
        runtime = cast(ContainerManager, self.containers)  # the stand-in has what these resources use
        self.engine = Engine(
            Config(data_root=self.data_root),
            "test-engine",
            warnings,
            image_store,
            VolumeStore(self.data_root),
            network,
            runtime,
        )
        router = Router()
        for module in (system, auth, images, volumes, filecopy):
            module.register(router, self.engine)
        self.server = HttpServer(router, common_headers(), context=self.engine)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.socket_path)
        self.sock.listen(64)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.server.spawn(conn, "unix")

    @property
    def images(self):
        return self.engine.images

    @property
    def volumes(self):
        return self.engine.volumes

    @property
    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = "unix://" + self.socket_path
        env["DOCKER_CONFIG"] = str(self.dir / "docker-config")
        return env

    def docker(self, *args, check=True, input=None, timeout=120):
        p = subprocess.run(["docker", *args], capture_output=True, env=self.env, input=input, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {p.returncode}\n{p.stdout!r}\n{p.stderr.decode()}")
        return p

    def client(self):
        import docker

        return docker.DockerClient(base_url="unix://" + self.socket_path, version="auto", timeout=120)

    def close(self):
        self._stop = True
        for c in list(self.containers.items.values()):
            try:
                self.containers.remove(c)
            except Exception:
                pass
        self.sock.close()


def short_tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dyi-", dir="/tmp"))


def cleanup(directory: Path):
    # overlay mounts first: rmtree must never descend into a mounted rootfs
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt.startswith(str(directory) + "/"):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def images_engine():
    """An ImagesEngine on a fresh data-root under /tmp (short paths: unix socket limits)."""
    if os.geteuid() != 0:
        pytest.skip("the image store needs root (owners, overlay mounts)")
    if not shutil.which("docker"):
        pytest.skip("needs the docker CLI")
    directory = short_tmpdir()
    eng = ImagesEngine(directory)
    try:
        yield eng
    finally:
        eng.close()
        cleanup(directory)
