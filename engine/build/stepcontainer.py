"""The containers a build step runs in: RUN's (started, output captured) and COPY/WORKDIR's (never
started: their rootfs is written by the engine), and committing a step's changes as a layer."""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Callable

from dockyard.engine.build import layerdiff
from dockyard.engine.errors import EngineError
from dockyard.engine.images.store import ImageStore
from dockyard.engine.runtime.manager import ContainerManager
from dockyard.engine.runtime.store import Container

_FRAME = struct.Struct(">BxxxI")


def create(
    containers: ContainerManager,
    image_id: str,
    cmd: list[str],
    run: dict,
    network: str,
    host_config: dict | None = None,
) -> Container:
    """A step container from `image_id`; run: Env, WorkingDir, User of the step; host_config: limits."""
    body = {
        "Image": image_id,
        "Cmd": cmd,
        "Entrypoint": [""],
        "Env": run.get("Env") or [],
        "WorkingDir": run.get("WorkingDir") or "",
        "User": run.get("User") or "",
        "Tty": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "Healthcheck": {"Test": ["NONE"]},
        "HostConfig": dict(host_config or {}, NetworkMode=network or "default", AutoRemove=False),
    }
    c, _ = containers.create(body)
    return c


def run(containers: ContainerManager, c: Container, output: Callable[[str], None]) -> int:
    """Start the container, send its stdout/stderr to output as it comes, -> exit code."""
    sock = containers.attach_socket(c, {"stdout": True, "stderr": True})
    try:
        containers.start(c)
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            while len(buf) >= _FRAME.size:
                _, size = _FRAME.unpack_from(buf)
                if len(buf) < _FRAME.size + size:
                    break
                payload = buf[_FRAME.size : _FRAME.size + size]
                buf = buf[_FRAME.size + size :]
                if payload:
                    output(payload.decode("utf-8", "replace"))
    finally:
        sock.close()
    code = containers.wait(c, "not-running")
    return int(code or 0)


def rootfs(c: Container) -> str:
    """The merged root of a created container (mounted by create)."""
    return c.record["Rootfs"]


def commit(images: ImageStore, c: Container, tmpdir: str) -> str | None:
    """The container's changes as a new layer; -> its diff ID, None when nothing changed."""
    upper = images.rootfs.upper_dir(c.id)
    shift = images.layers.shift
    unshift = layerdiff.unshifter(shift) if shift is not None else None
    fd, path = tempfile.mkstemp(prefix="diff-", suffix=".tar", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as out:
            count = layerdiff.write_diff(upper, out, unshift)
        if count == 0:
            return None
        with open(path, "rb") as fh:
            return images.layers.ingest(fh).diff_id
    finally:
        os.unlink(path)


def remove(containers: ContainerManager, c: Container) -> None:
    try:
        containers.remove(c, force=True, volumes=True)
    except EngineError:
        pass
