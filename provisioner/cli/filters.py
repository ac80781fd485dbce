"""`ls --filter` parsing and matching with Docker Machine's rules (same key OR'ed, keys AND'ed)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from dockyard.provisioner.core.errors import UsageError

__all__ = ["FILTER_KEYS", "parse_filters", "match", "needs_state", "swarm_master_name"]

FILTER_KEYS = ("driver", "state", "name", "swarm", "label")

_MASTER_SUFFIX = " (master)"


def parse_filters(values: list[str]) -> dict[str, list[str]]:
    """`["driver=qemu", "Name=^web"]` -> `{"driver": ["qemu"], "name": ["^web"]}`.

    Keys are case-insensitive; only keys that were given appear. Name regexes are checked here so
    a bad one fails before any machine is loaded.
    """
    filters: dict[str, list[str]] = {}
    for raw in values or ():
        key, sep, value = raw.partition("=")
        if not sep:
            raise UsageError("Unsupported filter syntax")
        key = key.lower()
        if key not in FILTER_KEYS:
            raise UsageError(f"Unsupported filter key '{key}'")
        if key == "name":
            _compile_name(value)
        filters.setdefault(key, []).append(value)
    return filters


def needs_state(filters: Mapping[str, list[str]]) -> bool:
    """True when a `state` filter is present, so the caller must know each machine's state first."""
    return bool(filters.get("state"))


def swarm_master_name(swarm_column: str) -> str:
    """The master's name from the ls Swarm column ("m1", "m1 (master)" or "m1 (manager)")."""
    for suffix in (_MASTER_SUFFIX, " (manager)"):
        if swarm_column.endswith(suffix):
            return swarm_column[: -len(suffix)]
    return swarm_column


def match(item, filters: Mapping[str, list[str]], labels: list[str] | None = None) -> bool:
    """Does one machine pass every filter key (any value of a key may match)?

    item: a HostListItem, or any object / dict with Name, DriverName, State and Swarm.
    labels: the machine's engine labels ("k=v"); None reads item.EngineOptions["Labels"].
    """
    if labels is None:
        engine = _get(item, "EngineOptions") or {}
        labels = list(engine.get("Labels") or []) if isinstance(engine, Mapping) else []
    for key, wanted in filters.items():
        if wanted and not any(_match_one(key, value, item, labels) for value in wanted):
            return False
    return True


def _get(item, name: str):
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _text(value) -> str:
    value = getattr(value, "value", value)  # State enums print their value
    return "" if value is None else str(value)


def _compile_name(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"Invalid name filter {pattern!r}: {err}") from None


def _match_one(key: str, value: str, item, labels: list[str]) -> bool:
    if key == "driver":
        return _text(_get(item, "DriverName")).lower() == value.lower()
    if key == "state":
        return _text(_get(item, "State")).lower() == value.lower()
    if key == "swarm":
        return swarm_master_name(_text(_get(item, "Swarm"))).lower() == value.lower()
    if key == "name":
        return _compile_name(value).search(_text(_get(item, "Name"))) is not None
    if key == "label":
        return _match_label(value, labels)
    raise UsageError(f"Unsupported filter key '{key}'")


def _match_label(wanted: str, labels: list[str]) -> bool:
    """`k=v` matches an engine label with key k (exact) and value v (any case).

    `k` alone matches any value (Docker Machine crashed on it). Later duplicates win, as in its map.
    """
    engine: dict[str, str] = {}
    for label in labels:
        k, _, v = label.partition("=")
        engine[k] = v
    key, sep, value = wanted.partition("=")
    if key not in engine:
        return False
    return not sep or engine[key].lower() == value.lower()
