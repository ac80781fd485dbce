"""Builds dockyard-engine.pyz: one reproducible, executable zipapp carrying the `dockyard.engine` package."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import marshal
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dockyard.provisioner.core.errors import ProvisionError
from dockyard.provisioner.core.files import atomic_write
from dockyard.provisioner.provision.initsys import BUNDLE_PATH

BUNDLE_NAME = "dockyard-engine.pyz"
INTERPRETER = "/usr/bin/env python3"
# Name of the info file inside the zip; engine/buildinfo.py reads the same name.
BUNDLE_INFO_NAME = "dockyard_bundle.json"
# Bump when the layout or the __main__ changes, so old bundles are not mistaken for current.
BUNDLE_FORMAT = 2  # 2: the engine sits at dockyard/engine inside the zip
VENDOR_DIR = "_vendor"
# Pure-Python packages the engine needs on hosts, by import name. pyroute2: bridge networking
# (netlink, nftables); imported lazily, and from an on-disk copy (engine/network/vendor.py).
VENDORED_PACKAGES: tuple[str, ...] = ("pyroute2",)

# zlib's default level: a third of level 9's time (0.09 s against 0.28 s for the engine with its byte code, which
# the first `create` with a store waits for) for a file 1% larger.
ZIP_LEVEL = 6
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold: timestamps carry no information
_EXCLUDED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
_NATIVE_SUFFIXES = (".so", ".pyd", ".dylib")

MAIN_PY = '''\
"""Entry point of dockyard-engine.pyz."""
import os
import sys

# Vendored pure-Python dependencies live in the zip under _vendor/.
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor"))

from dockyard.engine.daemon import main

sys.exit(main())
'''


# The bundle carries only the engine: its root package is a marker, not the client's dockyard/__init__.py.
ROOT_INIT_PY = '''"""dockyard, as shipped to hosts: only the engine (dockyard.engine) is in this bundle."""
'''


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle carries, read back from its info file."""

    format: int
    engine_version: str
    api_version: str
    source_sha256: str
    vendored: tuple[str, ...]


def _engine_dir() -> Path:
    spec = importlib.util.find_spec("dockyard.engine")
    if spec is None or not spec.submodule_search_locations:
        raise ProvisionError("cannot find the engine package to bundle")
    return Path(list(spec.submodule_search_locations)[0])


def _walk(root: Path, prefix: str) -> list[tuple[str, bytes]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for name in sorted(filenames):
            if name.endswith(_EXCLUDED_SUFFIXES):
                continue
            path = Path(dirpath) / name
            if name.endswith(_NATIVE_SUFFIXES):
                raise ProvisionError(f"cannot bundle native extension {path}: only pure Python")
            rel = path.relative_to(root).as_posix()
            files.append((f"{prefix}/{rel}" if rel else prefix, path.read_bytes()))
    return files


def _vendored_files(names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    files = []
    for name in names:
        if not name.isidentifier():
            raise ProvisionError(f"cannot vendor {name!r}: give a top-level import name")
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ProvisionError(f"cannot vendor {name!r}: not installed on this machine")
        if spec.submodule_search_locations:
            pkg_dir = Path(list(spec.submodule_search_locations)[0])
            files += _walk(pkg_dir, f"{VENDOR_DIR}/{name}")
        elif spec.origin and spec.origin.endswith(".py"):
            files.append((f"{VENDOR_DIR}/{name}.py", Path(spec.origin).read_bytes()))
        else:
            raise ProvisionError(f"cannot vendor {name!r}: not a pure-Python module")
    return files


def _engine_version(engine_dir: Path) -> tuple[str, str]:
    """(__version__, API_VERSION) of the engine source being bundled, without importing it."""
    tree = ast.parse((engine_dir / "__init__.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return str(found.get("__version__", "unknown")), str(found.get("API_VERSION", "unknown"))


def _sources(engine_dir: Path, vendored: tuple[str, ...]) -> list[tuple[str, bytes]]:
    files = _walk(engine_dir, "dockyard/engine") + _vendored_files(vendored)
    files.append(("dockyard/__init__.py", ROOT_INIT_PY.encode("utf-8")))
    files.append(("__main__.py", MAIN_PY.encode("utf-8")))
    return sorted(files)


# Byte code for the engine's modules, compiled here by this python: zipimport cannot cache byte code, so without it
# every engine start compiles the whole engine again (~6 s in a VM under emulation). A host python of another
# version finds a "bad magic number" and zipimport falls back to the .py next to it. Unchecked hash-based pycs
# (PEP 552): the .py beside each one comes from the same sources, so nothing needs validating at import.
# Compiled in a child with PYTHONHASHSEED=0: sets of strings in constants come out in the same order every time.
_COMPILE_PY = """
import importlib.util, marshal, sys
sources = marshal.loads(sys.stdin.buffer.read())
out = {}
for name, (filename, source) in sources.items():
    code = compile(source, filename, "exec", dont_inherit=True, optimize=0)
    header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source)
    out[name] = header + marshal.dumps(code)
sys.stdout.buffer.write(marshal.dumps(out))
"""
COMPILED_PREFIX = "dockyard/"  # the engine's own modules; vendored ones are imported from an on-disk copy


def _byte_code(files: list[tuple[str, bytes]], installed_at: str) -> list[tuple[str, bytes]]:
    """(name.pyc, unchecked-hash pyc) for each engine .py; tracebacks name the file as installed on hosts."""
    sources = {
        name[:-3] + ".pyc": (f"{installed_at}/{name}", data)
        for name, data in files
        if name.startswith(COMPILED_PREFIX) and name.endswith(".py")
    }
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run(
        [sys.executable, "-s", "-c", _COMPILE_PY], input=marshal.dumps(sources), capture_output=True, env=env, cwd="/"
    )
    if p.returncode != 0:
        why = p.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ProvisionError(f"cannot byte-compile the engine for its bundle: {why[0]}")
    return sorted(marshal.loads(p.stdout).items())


def _digest(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256(b"dockyard-bundle-format-%d\0" % BUNDLE_FORMAT)
    h.update(b"byte-code-" + importlib.util.MAGIC_NUMBER + b"\0")  # the pycs inside are this python's
    for name, data in files:
        h.update(name.encode("utf-8") + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def source_digest(engine_dir: str | os.PathLike | None = None, vendored: tuple[str, ...] = VENDORED_PACKAGES) -> str:
    """Hash of everything that goes into the bundle; equals the bundle's source_sha256."""
    root = Path(engine_dir) if engine_dir else _engine_dir()
    return _digest(_sources(root, tuple(vendored)))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _zip_bytes(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    buf.write(f"#!{INTERPRETER}\n".encode("utf-8"))
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever machine builds it
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=ZIP_LEVEL)
    return buf.getvalue()


def bundle_version(path: str | os.PathLike) -> BundleInfo | None:
    """The BundleInfo embedded in a .pyz, or None if it is missing or not a bundle."""
    try:
        with zipfile.ZipFile(path) as zf:
            raw = json.loads(zf.read(BUNDLE_INFO_NAME).decode("utf-8"))
        return BundleInfo(
            format=int(raw["format"]),
            engine_version=str(raw["engine_version"]),
            api_version=str(raw["api_version"]),
            source_sha256=str(raw["source_sha256"]),
            vendored=tuple(raw.get("vendored", ())),
        )
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None


_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def _build_lock(dest_dir: str | os.PathLike) -> threading.Lock:
    """One build at a time per destination in this process: a second caller waits, then reuses the file."""
    key = os.path.realpath(dest_dir)
    with _build_locks_guard:
        return _build_locks.setdefault(key, threading.Lock())


def build_bundle_in_background(dest_dir: str | os.PathLike) -> threading.Thread:
    """Start build_bundle(dest_dir) on a daemon thread, so the build (byte-compiling and zipping, ~0.3 s the first
    time) overlaps what comes before it is needed (the driver, the wait for SSH). A later build_bundle() waits for
    it and reuses the file; a failure here is left for that call to raise again."""

    lock = _build_lock(dest_dir)
    lock.acquire()  # here, not in the thread: every build_bundle() called after this returns waits for this build

    def build() -> None:
        try:
            _build(dest_dir, None, VENDORED_PACKAGES)
        except Exception:  # noqa: BLE001 - the caller's own build_bundle() reports it
            pass
        finally:
            lock.release()

    thread = threading.Thread(target=build, name="bundle-build", daemon=True)
    try:
        thread.start()
    except BaseException:
        lock.release()
        raise
    return thread


def build_bundle(
    dest_dir: str | os.PathLike,
    *,
    engine_dir: str | os.PathLike | None = None,
    vendored: tuple[str, ...] = VENDORED_PACKAGES,
) -> tuple[Path, str]:
    """Build (or reuse) DEST_DIR/dockyard-engine.pyz. Returns (path, sha256 hex of the file).

    Identical sources give a byte-identical file. If the file already there was
    built from the same sources it is returned as is (no rewrite).
    """
    with _build_lock(dest_dir):
        return _build(dest_dir, engine_dir, vendored)


def _build(
    dest_dir: str | os.PathLike, engine_dir: str | os.PathLike | None, vendored: tuple[str, ...]
) -> tuple[Path, str]:
    root = Path(engine_dir) if engine_dir else _engine_dir()
    if not (root / "__init__.py").is_file():
        raise ProvisionError(f"{root} is not the engine package")
    vendored = tuple(vendored)
    files = _sources(root, vendored)
    digest = _digest(files)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / BUNDLE_NAME

    current = bundle_version(target) if target.exists() else None
    if current is not None and current.source_sha256 == digest and current.format == BUNDLE_FORMAT:
        return target, file_sha256(target)

    version, api_version = _engine_version(root)
    info = {
        "format": BUNDLE_FORMAT,
        "engine_version": version,
        "api_version": api_version,
        "source_sha256": digest,
        "vendored": list(vendored),
    }
    info_bytes = (json.dumps(info, sort_keys=True, indent=1) + "\n").encode("utf-8")
    payload = _zip_bytes(sorted(files + _byte_code(files, BUNDLE_PATH) + [(BUNDLE_INFO_NAME, info_bytes)]))

    # Atomic: a concurrent reader sees the old or the new file; no fsync, a cache is rebuilt when lost.
    atomic_write(target, payload, 0o755, durable=False)
    return target, hashlib.sha256(payload).hexdigest()
