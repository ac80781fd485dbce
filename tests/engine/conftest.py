"""Fixtures for engine tests: a reproducible bundle, throwaway PKI and real daemon processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from dockyard.provisioner.provision.bundle import build_bundle
from tests.engine.certs_helper import make_pki
from tests.engine.engine_helper import EngineProcess
from tests.engine.runtime_helper import busybox_engine


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """(path, sha256) of dockyard-engine.pyz built from this tree."""
    return build_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _short_tmpdir():
    # sun_path is limited to 108 bytes: pytest's tmp_path is too long for sockets.
    return Path(tempfile.mkdtemp(prefix="dy-", dir="/tmp"))


class EngineStarter:
    """start(*args, python=None, module=False, wait=True) -> EngineProcess.

    Runs the pyz (or `python -m engine.daemon` with module=True) with its own
    socket, data root, exec root and pid file under `dir` unless told otherwise.
    """

    def __init__(self, pyz, directory):
        self.pyz = pyz
        self.dir = directory
        self.socket = str(directory / "engine.sock")
        self.procs = []

    def __call__(self, *args, python=None, module=False, wait=True, defaults=True, env=None):
        python = python or sys.executable
        argv = [python, "-m", "dockyard.engine.daemon"] if module else [python, str(self.pyz)]
        if defaults:
            argv += [
                "--data-root",
                str(self.dir / "data"),
                "--exec-root",
                str(self.dir / "exec"),
                "--pidfile",
                str(self.dir / "engine.pid"),
            ]
            if not any(a in ("-H", "--host") or a.startswith("--host=") for a in args):
                argv += ["-H", "unix://" + self.socket]
        argv += list(args)
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        proc = EngineProcess(argv, env=full_env)
        self.procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    def cleanup(self):
        for proc in self.procs:
            proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def start_engine(bundle):
    starter = EngineStarter(bundle[0], _short_tmpdir())
    yield starter
    starter.cleanup()


@pytest.fixture(scope="module")
def module_engine_starter(bundle):
    """For modules whose tests only read from one shared engine."""
    starter = EngineStarter(bundle[0], _short_tmpdir())
    yield starter
    starter.cleanup()


@pytest.fixture(scope="module")
def eng():
    """One engine with busybox per test module (a module that needs another setup defines its own `eng`)."""
    with busybox_engine() as e:
        yield e
