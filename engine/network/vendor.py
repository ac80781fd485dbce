"""Import pyroute2 from an on-disk copy of the bundle's vendored package, not through zipimport.

zipimport cannot cache bytecode, so every engine start would compile pyroute2's ~150
modules again (about 1 s). The first bridge network use extracts _vendor/pyroute2 from
the .pyz into data-root/network/vendor-<bundle hash>/ and puts that first on sys.path;
Python then keeps the compiled files there and later starts import in a fraction.
"""

import logging
import os
import shutil
import sys
import threading
import zipfile

from dockyard.engine.buildinfo import bundle_archive, read_bundle_info

log = logging.getLogger("dockyard.engine")

PACKAGE = "pyroute2"
_MEMBER_PREFIX = "_vendor/%s/" % PACKAGE
_lock = threading.Lock()
_done = False


def _safe_member(name):
    parts = name.split("/")
    return not name.startswith("/") and ".." not in parts and "" not in parts[:-1]


def _extract(archive, target):
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = "%s.%d.tmp" % (target, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        members = [n for n in zf.namelist() if n.startswith(_MEMBER_PREFIX) and _safe_member(n)]
        if not members:
            return False
        for name in members:
            dest = os.path.join(tmp, name[len("_vendor/") :])
            if name.endswith("/"):
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    try:
        os.rename(tmp, target)  # atomic: a concurrent engine sees all of it or nothing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(target):
            raise
    return True


def prepare(cache_root):
    """Make `import pyroute2` load from cache_root when running from a bundle (idempotent)."""
    global _done
    with _lock:
        if _done or PACKAGE in sys.modules:
            _done = True
            return
        _done = True
        archive = bundle_archive()
        if not archive:
            return  # source tree or installed package: normal imports with bytecode caching
        info = read_bundle_info(archive) or {}
        key = (info.get("source_sha256") or "")[:16]
        if not key or PACKAGE not in (info.get("vendored") or ()):
            return
        target = os.path.join(cache_root, "vendor-" + key)
        try:
            if not os.path.isdir(os.path.join(target, PACKAGE)) and not _extract(archive, target):
                return
        except (OSError, zipfile.BadZipFile) as exc:
            log.warning("cannot extract %s from %s (%s): importing it from the zip", PACKAGE, archive, exc)
            return
        sys.path.insert(0, target)
        for name in os.listdir(cache_root):  # copies of older bundles
            if name.startswith("vendor-") and name != "vendor-" + key and ".tmp" not in name:
                shutil.rmtree(os.path.join(cache_root, name), ignore_errors=True)
