"""Which build of the engine is running: version, source hash and build time (bundle or tree)."""

import json
import os
import zipfile

from dockyard import engine
from dockyard.engine import API_VERSION, MIN_API_VERSION, __version__
from dockyard.engine.timefmt import rfc3339nano

# Written into the zipapp by provisioner/provision/bundle.py; read here and by the provisioner.
BUNDLE_INFO_NAME = "dockyard_bundle.json"

_cache = None


def bundle_archive():
    """Path of the .pyz we were imported from, or None when running from a source tree."""
    loader = getattr(engine.__spec__, "loader", None)
    archive = getattr(loader, "archive", None)
    return archive if archive and os.path.isfile(archive) else None


def read_bundle_info(archive):
    """The bundle's embedded info dict, or None if the file carries none."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return json.loads(zf.read(BUNDLE_INFO_NAME).decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _newest_source_mtime():
    root = os.path.dirname(os.path.abspath(engine.__file__))
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                newest = max(newest, os.path.getmtime(os.path.join(dirpath, name)))
    return newest


def build_info():
    """dict: version, api_version, min_api_version, commit, source_sha256, build_time, bundle."""
    global _cache
    if _cache is not None:
        return dict(_cache)
    archive = bundle_archive()
    info = read_bundle_info(archive) if archive else None
    source = (info or {}).get("source_sha256")
    if archive:
        # The bundle has fixed timestamps (reproducible): its install time is the best we have.
        built = os.path.getmtime(archive)
    else:
        built = _newest_source_mtime()
    _cache = {
        "version": __version__,
        "api_version": API_VERSION,
        "min_api_version": MIN_API_VERSION,
        "commit": source[:7] if source else "dev",
        "source_sha256": source,
        "build_time": rfc3339nano(built),
        "bundle": archive,
    }
    return dict(_cache)
