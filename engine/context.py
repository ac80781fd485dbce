"""The engine's shared state handed to every API handler (req.engine): config, ID, hooks."""

import logging
import os
import time
import uuid

log = logging.getLogger("dockyard.engine")


def load_or_create_engine_id(data_root):
    """A UUID persisted in <data-root>/engine-id, so /info ID is stable across restarts."""
    path = os.path.join(data_root, "engine-id")
    try:
        with open(path) as fh:
            value = fh.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(value + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return value


class Engine:
    """What handlers share. Later subsystems hang their stores on `services` and feed /info.

    An info provider is a callable returning a dict merged into the /info answer,
    e.g. lambda: {"Containers": 3, "ContainersRunning": 1, "Images": 2}.
    """

    def __init__(self, config, engine_id, warnings=()):
        self.config = config
        self.id = engine_id
        self.started_at = time.time()
        self.warnings = list(warnings)
        self.info_providers = []
        self.services = {}

    def add_info_provider(self, provider):
        self.info_providers.append(provider)

    def collect_info(self):
        """Merged dicts of all info providers; a failing provider is logged, not fatal."""
        merged = {}
        for provider in self.info_providers:
            try:
                merged.update(provider() or {})
            except Exception:
                log.exception("info provider %r failed", provider)
        return merged
