"""The engine bundle: reproducible bytes, cache by content, contents, and running it (also on 3.9)."""

import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dockyard import engine
from dockyard.provisioner.core.errors import ProvisionError
from dockyard.provisioner.provision.bundle import (
    BUNDLE_INFO_NAME,
    BUNDLE_NAME,
    VENDORED_PACKAGES,
    build_bundle,
    bundle_version,
    source_digest,
)
from tests.engine.engine_helper import get_json

ENGINE_DIR = Path(engine.__file__).parent


@pytest.fixture
def engine_copy(tmp_path):
    """A copy of the engine package we may modify, with byte-code litter in it."""
    dst = tmp_path / "src" / "engine"
    shutil.copytree(ENGINE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "__pycache__").mkdir()
    (dst / "__pycache__" / "daemon.cpython-311.pyc").write_bytes(b"junk")
    (dst / "api" / "stray.pyc").write_bytes(b"junk")
    return dst


def test_reproducible_and_cached(engine_copy, tmp_path):
    p1, sha1 = build_bundle(tmp_path / "a", engine_dir=engine_copy)
    p2, sha2 = build_bundle(tmp_path / "b", engine_dir=engine_copy)
    assert p1.name == BUNDLE_NAME
    assert sha1 == sha2 == hashlib.sha256(p1.read_bytes()).hexdigest()
    assert p1.read_bytes() == p2.read_bytes()

    before = os.stat(p1)
    p3, sha3 = build_bundle(tmp_path / "a", engine_dir=engine_copy)
    after = os.stat(p3)
    assert sha3 == sha1
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not rewritten

    # Touching mtimes changes nothing; changing content changes the hash and rebuilds.
    os.utime(engine_copy / "daemon.py", (1, 1))
    assert build_bundle(tmp_path / "c", engine_dir=engine_copy)[1] == sha1
    with open(engine_copy / "daemon.py", "a") as fh:
        fh.write("\n# changed\n")
    p4, sha4 = build_bundle(tmp_path / "a", engine_dir=engine_copy)
    assert sha4 != sha1
    assert bundle_version(p4).source_sha256 == source_digest(engine_copy)
    assert bundle_version(p4).source_sha256 != bundle_version(tmp_path / "b" / BUNDLE_NAME).source_sha256


def test_contents(engine_copy, tmp_path):
    path, _ = build_bundle(tmp_path, engine_dir=engine_copy)
    data = path.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert os.stat(path).st_mode & 0o111 == 0o111
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert (
            "__main__.py" in names and "dockyard/engine/daemon.py" in names and "dockyard/engine/api/http.py" in names
        )
        assert not any("__pycache__" in n for n in names)
        # byte code only for the engine's own .py files, compiled here (no stray .pyc of the source tree)
        engine_py = {n for n in names if n.startswith("dockyard/") and n.endswith(".py")}
        assert {n for n in names if n.endswith(".pyc")} == {n[:-3] + ".pyc" for n in engine_py}
        assert {zi.date_time for zi in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        info = json.loads(zf.read(BUNDLE_INFO_NAME))
    assert info["engine_version"] == engine.__version__ and info["api_version"] == "1.50"
    assert info["vendored"] == list(VENDORED_PACKAGES)
    assert bundle_version(path).engine_version == engine.__version__
    assert bundle_version(tmp_path / "nothing.pyz") is None


def test_engine_byte_code_serves_this_python_and_others_fall_back(engine_copy, tmp_path):
    """zipimport cannot cache byte code: the bundle carries this python's, so an engine start compiles nothing;
    another python version finds a bad magic number and compiles the .py beside it."""
    path, _ = build_bundle(tmp_path, engine_dir=engine_copy)
    code = "import sys; sys.path.insert(0, sys.argv[1]); import dockyard.engine.daemon as d; print(d.__file__)"
    for python, loaded in ((sys.executable, "daemon.pyc"), (_python39(), "daemon.py")):
        if python:
            out = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
            assert out.stdout.strip() == f"{path}/dockyard/engine/{loaded}", out.stderr[-2000:]


def test_vendored_pure_python_package(engine_copy, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "dyvendtest"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path, _ = build_bundle(tmp_path / "out", engine_dir=engine_copy, vendored=("dyvendtest",))
    assert bundle_version(path).vendored == ("dyvendtest",)
    with zipfile.ZipFile(path) as zf:
        assert "_vendor/dyvendtest/__init__.py" in zf.namelist()
    # __main__ puts <pyz>/_vendor on sys.path; check that path works through zipimport.
    code = "import sys; sys.path.insert(0, %r); import dyvendtest; print(dyvendtest.VALUE)" % (str(path) + "/_vendor")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "42", out.stderr

    (pkg / "native.so").write_bytes(b"\x7fELF")
    with pytest.raises(ProvisionError, match="native extension"):
        build_bundle(tmp_path / "out2", engine_dir=engine_copy, vendored=("dyvendtest",))


def test_bundle_info_from_the_running_file(bundle):
    out = subprocess.run([sys.executable, str(bundle[0]), "--bundle-info"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["source_sha256"] == bundle_version(bundle[0]).source_sha256 == source_digest()
    assert info["bundle"] == str(bundle[0])


def _python39():
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates += [p for p in ("/usr/bin/python3.9",) if os.path.exists(p)]
    return candidates[0] if candidates else None


@pytest.mark.skipif(_python39() is None, reason="no python3.9 on this machine")
def test_engine_runs_on_python39(start_engine):
    py39 = _python39()
    proc = start_engine(python=py39)
    version = get_json("/version", unix=start_engine.socket)
    assert version["GoVersion"].startswith("python3.9.")
    info = get_json("/info", unix=start_engine.socket)
    assert info["NCPU"] >= 1 and info["MemTotal"] > 0
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(start_engine.socket)
    s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 404 ") and b'{"message":"page not found"}' in data
    assert proc.stop() == 0
    # Every engine module must at least compile on 3.9 (catches 3.10+ syntax in modules
    # the endpoints above do not import yet).
    out = subprocess.run(
        [
            py39,
            "-c",
            (
                "import ast, pathlib, sys\n"
                "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.py')):\n"
                "    compile(p.read_text(), str(p), 'exec')\n"
            ),
            str(ENGINE_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(_python39() is None, reason="no python3.9 on this machine")
def test_every_engine_module_imports_on_python39(bundle):
    """Starting the engine imports only part of it: import every module of the bundle under 3.9."""
    code = (
        "import sys, pkgutil, importlib; sys.path.insert(0, sys.argv[1]);"
        "import dockyard.engine as e; names = [m.name for m in pkgutil.walk_packages(e.__path__, 'dockyard.engine.')];"
        "[importlib.import_module(n) for n in names]; print(len(names))"
    )
    out = subprocess.run([_python39(), "-c", code, str(bundle[0])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout) > 50
