"""Helpers for end-to-end tests: run the real `dockyard` CLI and the real `docker` CLI against test hosts."""

import glob
import os
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clean_env(extra=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCKER_", "DOCKYARD_")) and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class Dockyard:
    """Runs `python3 -m provisioner` with its own store.

    Engines in test hosts see the machine's cgroup tree; every machine this fixture creates gets its
    own cgroup parent, removed at the end, so containers of tests leave no cgroups behind. Test engines
    pull only from local registries."""

    def __init__(self, store):
        self.store = str(store)
        self.cgroup_parent = f"dockyard-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def argv(self, *args):
        args = [str(a) for a in args]
        if args[:1] == ["create"]:
            extra = []
            if not any("cgroup-parent=" in a for a in args):
                extra += ["--engine-opt", f"cgroup-parent={self.cgroup_parent}"]
            if not any("registry-pull=" in a for a in args):
                # Test engines never try a public registry (provisioned engines do by default).
                extra += ["--engine-opt", "registry-pull=local"]
            args[1:1] = extra
        return [sys.executable, "-m", "dockyard", "--storage-path", self.store, *args]

    def remove_cgroups(self):
        """rmdir the fixture's cgroup subtrees, deepest first (cgroups are removed with rmdir)."""
        for tree in glob.glob(f"/sys/fs/cgroup/*/{self.cgroup_parent}") + glob.glob(
            f"/sys/fs/cgroup/unified/{self.cgroup_parent}"
        ):
            for _ in range(50):
                dirs = sorted((d for d, _, _ in os.walk(tree)), key=len, reverse=True)
                for d in dirs:
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
                if not os.path.exists(tree):
                    break
                time.sleep(0.1)  # the last processes of a torn-down host may still be exiting

    def __call__(self, *args, check=True, timeout=300, input=None, env=None):
        p = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, input=input, env=clean_env(env), cwd=ROOT
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"dockyard {' '.join(map(str, args))} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
            )
        return p

    def popen(self, *args, env=None):
        return subprocess.Popen(
            self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(env), cwd=ROOT
        )

    def docker(self, name, *args, check=True, timeout=120):
        """The real docker CLI, pointed at the machine the way a user does: eval "$(dockyard env NAME)"."""
        script = f'eval "$({" ".join(self.argv("env", "--shell", "bash", name))})" && exec docker "$@"'
        p = subprocess.run(
            ["bash", "-c", script, "bash", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            cwd=ROOT,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p


def docker_py(dockyard, name, monkeypatch, timeout=120):
    """A docker-py client for a machine, over mutual TLS with the machine's certs."""
    import docker

    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would override the machine's ca.pem
        monkeypatch.delenv(var, raising=False)
    mdir = os.path.join(dockyard.store, "machines", name)
    env = dockyard("env", "--shell", "bash", name).stdout
    host = next(line.split('"')[1] for line in env.splitlines() if "DOCKER_HOST=" in line)
    tls = docker.tls.TLSConfig(
        client_cert=(os.path.join(mdir, "cert.pem"), os.path.join(mdir, "key.pem")),
        ca_cert=os.path.join(mdir, "ca.pem"),
        verify=True,
    )
    return docker.DockerClient(base_url=host.replace("tcp://", "https://"), tls=tls, version="auto", timeout=timeout)


@pytest.fixture
def dockyard(tmp_path):
    d = Dockyard(tmp_path / "store")
    yield d
    d.remove_cgroups()
