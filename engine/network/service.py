"""Registers the NetworkManager as engine.services["network"] at daemon start."""

import logging

from dockyard.engine.network.manager import NetworkManager

log = logging.getLogger("dockyard.engine")


def start(engine):
    """Cheap on purpose: the bridge and NAT are set up (and pyroute2 loaded) on first use."""
    cfg = engine.config
    try:
        manager = NetworkManager(cfg.data_root, cfg.opts, engine.warnings)
    except ValueError as exc:  # a bad bip=/mtu=/bridge= engine opt
        raise RuntimeError("network configuration: %s" % exc) from None
    engine.services["network"] = manager
    return manager
