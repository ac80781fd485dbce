"""Legacy container links (`docker run --link NAME[:ALIAS]`): Docker's hosts entries and environment
variables for each linked container, as moby's daemon/links builds them.

HostConfig.Links holds "name:alias" (as the CLI and docker-py send it) or moby's "/name:/container/alias".
A linked container must be running when the linking one starts and share a network with it.
"""

from __future__ import annotations

import re
from typing import List, NamedTuple, Tuple

from dockyard.engine.errors import InvalidParameter

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# The linked container's own variables that moby does not pass on.
_SKIPPED_ENV = ("HOME", "PATH", "HOSTNAME")


class Link(NamedTuple):
    name: str  # the linked container's name or ID, as given
    alias: str


def parse_link(entry: str) -> Link:
    """ "db", "db:alias" or "/db:/web/alias" -> Link; InvalidParameter for anything else."""
    name, sep, alias = str(entry).partition(":")
    name = name.lstrip("/")
    alias = alias.rsplit("/", 1)[-1] if sep else name
    if not name or not alias or not _NAME.match(name) or not _NAME.match(alias):
        raise InvalidParameter("invalid link format: %s (expected name:alias)" % entry)
    return Link(name, alias)


def parse_links(entries) -> List[Link]:
    return [parse_link(e) for e in entries or ()]


def _sorted_ports(exposed: dict) -> List[Tuple[int, str]]:
    out = []
    for key in exposed or {}:
        port, _, proto = str(key).partition("/")
        try:
            out.append((int(port), proto or "tcp"))
        except ValueError:
            continue
    return sorted(out)


def link_env(own_name: str, link: Link, ip: str, exposed: dict, target_env) -> List[str]:
    """The variables moby gives the linking container for one link (ALIAS_NAME, ALIAS_PORT...,
    ALIAS_ENV_...)."""
    prefix = link.alias.upper().replace("-", "_").replace(".", "_")
    env = ["%s_NAME=/%s/%s" % (prefix, own_name.lstrip("/"), link.alias)]
    ports = _sorted_ports(exposed)
    if ports:
        port, proto = ports[0]
        env.append("%s_PORT=%s://%s:%d" % (prefix, proto, ip, port))
    for port, proto in ports:
        key = "%s_PORT_%d_%s" % (prefix, port, proto.upper())
        env += [
            "%s=%s://%s:%d" % (key, proto, ip, port),
            "%s_ADDR=%s" % (key, ip),
            "%s_PORT=%d" % (key, port),
            "%s_PROTO=%s" % (key, proto),
        ]
    for item in target_env or ():
        key, sep, value = str(item).partition("=")
        if sep and key not in _SKIPPED_ENV:
            env.append("%s_ENV_%s=%s" % (prefix, key, value))
    return env


def hosts_entries(link: Link, target_id: str, target_name: str, ip: str) -> List[str]:
    """ExtraHosts-style "name:ip" entries: the alias, the short ID and the name of the linked container."""
    names = list(dict.fromkeys([link.alias, target_id[:12], target_name.lstrip("/")]))
    return ["%s:%s" % (n, ip) for n in names]
