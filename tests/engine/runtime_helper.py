"""A real engine for runtime tests on this machine: its own network and mount namespace (never the
root netns), its own cgroup parent (dockyard-test-*, removed afterwards), the busybox test image."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from dockyard.engine.runtime import cgroups
from tests.engine.engine_helper import REPO, EngineProcess
from tests.images import busybox_tar


def _pids_mentioning(text):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(entry))
    return out


class RuntimeEngine:
    """start()/stop()/restart() one engine on fixed dirs; docker(...) runs the real CLI against it."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="dyrt-", dir="/tmp"))
        self.sock = str(self.dir / "engine.sock")
        self.cgroup_parent = "dockyard-test-" + uuid.uuid4().hex[:10]
        self.proc = None

    def argv(self):
        return [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "dockyard.engine.daemon",
            "--data-root",
            str(self.dir / "data"),
            "--exec-root",
            str(self.dir / "exec"),
            "--pidfile",
            str(self.dir / "engine.pid"),
            "-H",
            "unix://" + self.sock,
            "--opt",
            "cgroup-parent=" + self.cgroup_parent,
            "--debug",
        ]

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("NOTIFY_SOCKET", None)
        self.proc = EngineProcess(self.argv(), env=env)
        self.proc.wait_ready()
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None:
            self.proc.stop(sig)
            self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = "unix://" + self.sock
        return env

    def docker(self, *args, check=True, input=None, timeout=60):
        p = subprocess.run(
            ["docker", *args], capture_output=True, text=True, env=self.env(), input=input, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}\n"
                f"engine:\n{self.proc.stderr[-3000:] if self.proc else ''}"
            )
        return p

    def client(self):
        import docker

        return docker.DockerClient(base_url="unix://" + self.sock, version="auto", timeout=60)

    def load_busybox(self):
        self.docker("load", "-i", str(busybox_tar()))

    def cgroup_file(self, controller, cid, name):
        lay = cgroups.layout()
        if lay.version == "2":
            return os.path.join(lay.v2root, self.cgroup_parent, cid, name)
        return os.path.join(lay.v1[controller], self.cgroup_parent, cid, name)

    def cleanup(self):
        if self.proc is not None:
            try:
                self.docker("rm", "-f", *self.docker("ps", "-aq").stdout.split(), check=False)
            except Exception:
                pass
        self.stop()
        # Supervisors are forked from the engine: their command line names our directory.
        for pid in _pids_mentioning(str(self.dir) + "/"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
        lay = cgroups.layout()
        roots = [lay.v2root] if lay.version == "2" else sorted(set(lay.v1.values()))
        for root in roots:
            parent = os.path.join(root, self.cgroup_parent)
            if os.path.isdir(parent):
                for child in os.listdir(parent):
                    if os.path.isdir(os.path.join(parent, child)):
                        cg = cgroups.Cgroup("1", {"x": os.path.join(parent, child)})
                        cg.kill_all()
                        cg.remove(timeout=2.0)
        cgroups.remove_parent(self.cgroup_parent)
        shutil.rmtree(self.dir, ignore_errors=True)


class RemapEngine(RuntimeEngine):
    """An engine started with --userns-remap default (root in its containers is the first subordinate id)."""

    def argv(self):
        return super().argv() + ["--userns-remap", "default"]


@contextlib.contextmanager
def busybox_engine(engine_class: type[RuntimeEngine] = RuntimeEngine) -> Iterator[RuntimeEngine]:
    """A started engine with the busybox image loaded; stopped and cleaned up on the way out, also on failure."""
    e = engine_class()
    try:
        e.start()
        e.load_busybox()
        yield e
    finally:
        e.cleanup()


@contextlib.contextmanager
def remapping_engine() -> Iterator[RuntimeEngine]:
    """busybox_engine(RemapEngine), or a pytest skip where remapping cannot run (not root, no user namespaces,
    no useradd to create the remap user)."""
    import pytest

    from dockyard.engine.runtime import userns

    if os.geteuid() != 0 or userns.unsupported_reason() is not None or shutil.which("useradd") is None:
        pytest.skip("needs root, user namespaces and useradd")
    with busybox_engine(RemapEngine) as e:
        yield e


def child_pids(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (from /proc/N/stat; processes that vanish while read are skipped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
