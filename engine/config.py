"""Daemon configuration: dockerd-style flags merged over an optional JSON config file."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from urllib.parse import urlsplit

from dockyard.engine.listeners import DEFAULT_UNIX_SOCKET

DEFAULT_CONFIG_FILE = "/etc/dockyard/daemon.json"
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "fatal")
DEFAULT_MAX_CONCURRENT_DOWNLOADS = 3
DEFAULT_MAX_CONCURRENT_UPLOADS = 5


class ConfigError(Exception):
    """Invalid flags or config file; the daemon prints it and exits 1."""


class Config:
    """Every setting of the daemon, after merging defaults < config file < flags."""

    # Set from FIELDS in __init__; declared for readers and type checkers.
    hosts: list[str]
    tlsverify: bool
    tlscacert: str | None
    tlscert: str | None
    tlskey: str | None
    insecure_tcp: bool
    labels: list[str]
    data_root: str
    exec_root: str
    storage_driver: str
    insecure_registries: list[str]
    registry_mirrors: list[str]
    pidfile: str
    log_level: str
    debug: bool
    opts: dict[str, str]
    group: str
    userns_remap: str
    max_concurrent_downloads: int
    max_concurrent_uploads: int

    # name -> (default, kind). kind: "str", "bool", "int", "list", "opts"
    FIELDS = {
        "hosts": (None, "list"),
        "tlsverify": (False, "bool"),
        "tlscacert": (None, "str"),
        "tlscert": (None, "str"),
        "tlskey": (None, "str"),
        "insecure_tcp": (False, "bool"),
        "labels": ((), "list"),
        "data_root": ("/var/lib/dockyard", "str"),
        "exec_root": ("/run/dockyard", "str"),
        # "" automatic: overlay2 where a probe mount works in the data-root, else vfs (images/storagedriver.py)
        "storage_driver": ("", "str"),
        "insecure_registries": ((), "list"),
        "registry_mirrors": ((), "list"),
        "pidfile": (None, "str"),
        "log_level": ("info", "str"),
        "debug": (False, "bool"),
        "opts": (None, "opts"),
        "group": ("docker", "str"),
        "userns_remap": ("", "str"),  # "" off; default, USER[:GROUP] or UID[:GID] (engine/runtime/userns.py)
        # layers of one pull/push transferred at once (dockerd's defaults; 0 means the default, as moby)
        "max_concurrent_downloads": (DEFAULT_MAX_CONCURRENT_DOWNLOADS, "int"),
        "max_concurrent_uploads": (DEFAULT_MAX_CONCURRENT_UPLOADS, "int"),
    }

    def __init__(self, **values):
        for name, (default, kind) in self.FIELDS.items():
            value = values.pop(name, None)
            if value is None:
                value = default
            if kind == "list":
                value = list(value or [])
            elif kind == "opts":
                value = dict(value or {})
            setattr(self, name, value)
        if values:
            raise TypeError("unknown config fields: %s" % ", ".join(sorted(values)))
        self.config_file = None
        if not self.hosts:
            self.hosts = ["unix://" + DEFAULT_UNIX_SOCKET]
        if not self.pidfile:
            self.pidfile = os.path.join(self.exec_root, "dockyard-engine.pid")
        if self.debug:
            self.log_level = "debug"

    def as_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}


# Config-file keys: dockerd's daemon.json names, plus the singular flag names as aliases.
_FILE_KEYS = {
    "hosts": "hosts",
    "host": "hosts",
    "tlsverify": "tlsverify",
    "tlscacert": "tlscacert",
    "tlscert": "tlscert",
    "tlskey": "tlskey",
    "insecure-tcp": "insecure_tcp",
    "labels": "labels",
    "label": "labels",
    "data-root": "data_root",
    "exec-root": "exec_root",
    "storage-driver": "storage_driver",
    "insecure-registries": "insecure_registries",
    "insecure-registry": "insecure_registries",
    "registry-mirrors": "registry_mirrors",
    "registry-mirror": "registry_mirrors",
    "pidfile": "pidfile",
    "log-level": "log_level",
    "debug": "debug",
    "opts": "opts",
    "opt": "opts",
    "group": "group",
    "userns-remap": "userns_remap",
    "max-concurrent-downloads": "max_concurrent_downloads",
    "max-concurrent-uploads": "max_concurrent_uploads",
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="dockyard-engine",
        description="dockyard container engine: serves the Docker Engine API.",
    )
    p.add_argument(
        "-H",
        "--host",
        dest="hosts",
        action="append",
        metavar="URL",
        help="socket to listen on, repeatable (default unix://%s; tcp://IP:2376)" % DEFAULT_UNIX_SOCKET,
    )
    p.add_argument("--tlsverify", action="store_true", default=None, help="require mutual TLS on tcp:// hosts")
    p.add_argument("--tlscacert", metavar="PATH", help="CA that signs client certificates")
    p.add_argument("--tlscert", metavar="PATH", help="server certificate")
    p.add_argument("--tlskey", metavar="PATH", help="server key")
    p.add_argument(
        "--insecure-tcp",
        dest="insecure_tcp",
        action="store_true",
        default=None,
        help="allow tcp:// without TLS (anyone who can connect is root on this host)",
    )
    p.add_argument("--label", dest="labels", action="append", metavar="KEY=VALUE", help="engine label, repeatable")
    p.add_argument("--data-root", dest="data_root", metavar="DIR", help="persistent state (default /var/lib/dockyard)")
    p.add_argument("--exec-root", dest="exec_root", metavar="DIR", help="runtime state (default /run/dockyard)")
    p.add_argument(
        "--storage-driver",
        dest="storage_driver",
        metavar="NAME",
        help="storage driver: overlay2 or vfs (default: overlay2 if the data-root can hold overlayfs, else vfs)",
    )
    p.add_argument(
        "--insecure-registry",
        dest="insecure_registries",
        action="append",
        metavar="HOST[:PORT]|CIDR",
        help="registry allowed over plain HTTP, repeatable",
    )
    p.add_argument(
        "--registry-mirror",
        dest="registry_mirrors",
        action="append",
        metavar="URL",
        help="docker.io mirror, repeatable",
    )
    p.add_argument("--pidfile", metavar="PATH", help="pid file (default <exec-root>/dockyard-engine.pid)")
    p.add_argument("-l", "--log-level", dest="log_level", choices=LOG_LEVELS)
    p.add_argument(
        "--config-file",
        dest="config_file",
        metavar="PATH",
        help="JSON config, keys as the long flags (default %s if present)" % DEFAULT_CONFIG_FILE,
    )
    p.add_argument("-D", "--debug", action="store_true", default=None)
    p.add_argument(
        "--opt",
        dest="opts",
        action="append",
        metavar="KEY=VALUE",
        help="generic option for engine subsystems (e.g. bip=172.17.0.1/16), repeatable",
    )
    p.add_argument(
        "--userns-remap",
        dest="userns_remap",
        metavar="default|USER[:GROUP]",
        help="run containers in user namespaces: their root is a subordinate id of USER on the host (default: "
        "the user dockyard-remap, created if missing); off unless given",
    )
    p.add_argument(
        "--max-concurrent-downloads",
        dest="max_concurrent_downloads",
        type=_int_flag,
        metavar="N",
        help="layers of one pull downloaded at once (default %d)" % DEFAULT_MAX_CONCURRENT_DOWNLOADS,
    )
    p.add_argument(
        "--max-concurrent-uploads",
        dest="max_concurrent_uploads",
        type=_int_flag,
        metavar="N",
        help="layers of one push uploaded at once (default %d)" % DEFAULT_MAX_CONCURRENT_UPLOADS,
    )
    p.add_argument("-G", "--group", metavar="GROUP", help="group owning unix sockets (default docker, if it exists)")
    p.add_argument("-v", "--version", action="store_true", help="print version and exit")
    p.add_argument(
        "--bundle-info", dest="bundle_info", action="store_true", help="print build information as JSON and exit"
    )
    return p


def _int_flag(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid integer %r" % text) from None


def _split_opts(items, origin):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("%s: option %r is not KEY=VALUE" % (origin, item))
        out[key] = value
    return out


def _load_file(path):
    try:
        with open(path, "r", encoding="utf-8") as fh:
            raw = json.load(fh)
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise ConfigError("config file %s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError("config file %s must hold a JSON object" % path)
    values, unknown = {}, []
    for key, value in raw.items():
        name = _FILE_KEYS.get(key) or _FILE_KEYS.get(key.replace("_", "-"))
        if name is None:
            unknown.append(key)
            continue
        kind = Config.FIELDS[name][1]
        where = "config file %s: %r" % (path, key)
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError("%s must be true or false" % where)
        if kind == "str" and not isinstance(value, str):
            raise ConfigError("%s must be a string" % where)
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError("%s must be an integer" % where)
        if kind == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError("%s must be a list of strings" % where)
        if kind == "opts":
            if isinstance(value, list):
                value = _split_opts(value, where)
            elif isinstance(value, dict):
                value = {str(k): str(v) for k, v in value.items()}
            else:
                raise ConfigError("%s must be an object or a list of KEY=VALUE" % where)
        if name in values:
            raise ConfigError("config file %s sets %s twice" % (path, name))
        values[name] = value
    if unknown:
        raise ConfigError("config file %s: unknown keys: %s" % (path, ", ".join(sorted(unknown))))
    return values


def _validate(cfg):
    for label in cfg.labels:
        key, sep, _ = label.partition("=")
        if not sep or not key:
            raise ConfigError("label %r is not KEY=VALUE" % label)
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError("log level %r is not one of %s" % (cfg.log_level, ", ".join(LOG_LEVELS)))
    mirrors = []
    for mirror in cfg.registry_mirrors:
        parts = urlsplit(mirror)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("invalid registry mirror %r: must be an http(s) URL" % mirror)
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ConfigError("invalid registry mirror %r: no path or query allowed" % mirror)
        mirrors.append(mirror.rstrip("/") + "/")  # moby normalises to a trailing slash
    cfg.registry_mirrors = mirrors
    for reg in cfg.insecure_registries:
        if "://" in reg:
            raise ConfigError("insecure registry %s should not contain '://'" % reg)
    # moby's checks and words; 0 stands for the default, as in moby's daemon config
    if cfg.max_concurrent_downloads < 0:
        raise ConfigError("invalid max concurrent downloads: %d" % cfg.max_concurrent_downloads)
    if cfg.max_concurrent_uploads < 0:
        raise ConfigError("invalid max concurrent uploads: %d" % cfg.max_concurrent_uploads)
    cfg.max_concurrent_downloads = cfg.max_concurrent_downloads or DEFAULT_MAX_CONCURRENT_DOWNLOADS
    cfg.max_concurrent_uploads = cfg.max_concurrent_uploads or DEFAULT_MAX_CONCURRENT_UPLOADS
    if cfg.userns_remap:
        user, _, group = cfg.userns_remap.partition(":")
        if not user or ":" in group or (user == "default" and group):
            raise ConfigError("invalid --userns-remap %r: use default, USER[:GROUP] or UID[:GID]" % cfg.userns_remap)
    for path_name in ("data_root", "exec_root", "pidfile"):
        if not os.path.isabs(getattr(cfg, path_name)):
            raise ConfigError("--%s must be an absolute path" % path_name.replace("_", "-"))


def parse_config(argv):
    """-> (Config, argparse namespace). Flags override the config file, which overrides defaults."""
    args = build_parser().parse_args(argv)
    file_values = {}
    config_file = args.config_file
    if config_file is None and os.path.exists(DEFAULT_CONFIG_FILE):
        config_file = DEFAULT_CONFIG_FILE
    if config_file:
        file_values = _load_file(config_file)
    values = dict(file_values)
    for name in Config.FIELDS:
        flag_value = getattr(args, name, None)
        if flag_value is None:
            continue
        if name == "opts":
            flag_value = _split_opts(flag_value, "--opt")
        values[name] = flag_value
    cfg = Config(**values)
    cfg.config_file = config_file
    _validate(cfg)
    return cfg, args


SYSTEM_CERTS_D = "/etc/dockyard/certs.d"


def registry_certs_dirs(cfg) -> list[str]:
    """Where registry TLS files live, first match wins: <data-root>/certs.d/<host:port>/, then
    /etc/dockyard/certs.d/<host:port>/ (Docker's /etc/docker/certs.d layout: *.crt CAs, *.cert + *.key pairs)."""
    return [os.path.join(cfg.data_root, "certs.d"), SYSTEM_CERTS_D]


def registry_config(cfg):
    """/info RegistryConfig from --insecure-registry and --registry-mirror, shaped like moby's."""
    cidrs = ["::1/128", "127.0.0.0/8"]
    index = {
        "docker.io": {"Name": "docker.io", "Mirrors": list(cfg.registry_mirrors), "Secure": True, "Official": True},
    }
    for reg in cfg.insecure_registries:
        try:
            # Like moby, only CIDR notation is a network; a bare IP or name is a registry name.
            if "/" not in reg:
                raise ValueError(reg)
            net = ipaddress.ip_network(reg, strict=False)
        except ValueError:
            index[reg] = {"Name": reg, "Mirrors": [], "Secure": False, "Official": False}
        else:
            if str(net) not in cidrs:
                cidrs.append(str(net))
    return {
        "InsecureRegistryCIDRs": cidrs,
        "IndexConfigs": index,
        "Mirrors": list(cfg.registry_mirrors),
    }
