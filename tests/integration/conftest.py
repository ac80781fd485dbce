"""Helpers for end-to-end tests: run the real `dockyard` CLI and the real `docker` CLI against test hosts."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKER_", "DOCKYARD_")) and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class Dockyard:
    """Runs `python3 -m provisioner` with its own store."""

    def __init__(self, store):
        self.store = str(store)

    def argv(self, *args):
        return [sys.executable, "-m", "provisioner", "--storage-path", self.store, *map(str, args)]

    def __call__(self, *args, check=True, timeout=300, input=None, env=None):
        p = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                           input=input, env=clean_env(env), cwd=ROOT)
        if check and p.returncode != 0:
            raise AssertionError(f"dockyard {' '.join(map(str, args))} exited {p.returncode}\n"
                                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def popen(self, *args, env=None):
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_env(env), cwd=ROOT)

    def docker(self, name, *args, check=True, timeout=120):
        """The real docker CLI, pointed at the machine the way a user does: eval "$(dockyard env NAME)"."""
        script = f'eval "$({" ".join(self.argv("env", "--shell", "bash", name))})" && exec docker "$@"'
        p = subprocess.run(["bash", "-c", script, "bash", *args], capture_output=True, text=True,
                           timeout=timeout, env=clean_env(), cwd=ROOT)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p


@pytest.fixture
def dockyard(tmp_path):
    return Dockyard(tmp_path / "store")
