"""The network part's JSON state files: written durably and atomically, read leniently."""

import json
import logging
import os

from dockyard.engine.atomicfile import atomic_write_json

log = logging.getLogger("dockyard.engine")


def write_json(path, obj, durable=True):
    """Replace `path` with `obj` as JSON; readers see the old or the new file, never half. `durable`: also
    after a power cut (fsync); state about running containers only (they do not survive one) skips it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    atomic_write_json(path, obj, durable=durable)


def read_json(path, default=None):
    """The parsed file, or `default` when it does not exist or is not valid JSON."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except ValueError as exc:
        # A torn file cannot happen with write_json; a hand-edited broken one is treated as absent.
        log.warning("ignoring unreadable network state %s: %s", path, exc)
        return default
