"""`docker import` (a rootfs tarball, maybe compressed, becomes a one-layer image) and the
Dockerfile-style `--change` instructions that import and commit apply to a container config."""

from __future__ import annotations

import json
import shlex

from dockyard.engine import hostinfo
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images import reference
from dockyard.engine.timefmt import rfc3339nano

_CHANGE_COMMANDS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")


def _json_or_shell(rest, shell_form):
    text = rest.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        except ValueError:
            pass
    return ["/bin/sh", "-c", text] if shell_form else text.split()


def _pairs(rest, what):
    """'a=b "c d"=e' or legacy 'KEY value with spaces' -> [(k, v)]."""
    rest = rest.strip()
    words = shlex.split(rest) if rest else []
    if not words:
        raise InvalidParameter("%s requires at least one argument" % what)
    if "=" not in words[0]:
        key, _, value = rest.partition(" ")
        if not value.strip():
            raise InvalidParameter(
                "%s names can not be blank" % what if not key else "%s requires at least two arguments" % what
            )
        return [(key, value.strip())]
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidParameter("%s names can not be blank" % what)
        out.append((key, value))
    return out


def apply_changes(config, changes):
    """Apply Dockerfile-style `--change` lines to a container config dict (docker import/commit)."""
    for line in changes or []:
        line = line.strip()
        if not line:
            continue
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        if cmd not in _CHANGE_COMMANDS:
            raise InvalidParameter("%s is not a valid change command" % cmd)
        if cmd in ("CMD", "ENTRYPOINT"):
            config["Cmd" if cmd == "CMD" else "Entrypoint"] = _json_or_shell(rest, True)
            if cmd == "ENTRYPOINT":
                config.setdefault("Cmd", None)
        elif cmd == "ENV":
            env = list(config.get("Env") or [])
            for key, value in _pairs(rest, "ENV"):
                env = [e for e in env if e.split("=", 1)[0] != key] + ["%s=%s" % (key, value)]
            config["Env"] = env
        elif cmd == "LABEL":
            labels = dict(config.get("Labels") or {})
            for key, value in _pairs(rest, "LABEL"):
                labels[key] = value
            config["Labels"] = labels
        elif cmd == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for port in rest.split():
                if "/" not in port:
                    port += "/tcp"
                ports[port.lower()] = {}
            config["ExposedPorts"] = ports
        elif cmd == "VOLUME":
            vols = dict(config.get("Volumes") or {})
            for v in _json_or_shell(rest, False):
                vols[v] = {}
            config["Volumes"] = vols
        elif cmd == "ONBUILD":
            config["OnBuild"] = list(config.get("OnBuild") or []) + [rest.strip()]
        else:
            key = {"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[cmd]
            config[key] = rest.strip()
    return config


def import_rootfs(store, fileobj, repo=None, tag=None, message="", changes=(), source="-", platform=None):
    """`docker import`: a rootfs tarball (maybe compressed) -> a new one-layer image (+ tag)."""
    target = None
    if repo:
        target = reference.parse(repo)
        if tag:
            target = reference.parse("%s:%s" % (target.repo, tag))
        if target.digest:
            raise InvalidParameter("cannot import digest reference")
    os_name, arch = "linux", hostinfo.go_arch()
    if platform:
        bits = platform.split("/")
        if bits[0] != "linux" or (len(bits) > 1 and bits[1] != arch):
            raise InvalidParameter("image operating system/architecture %r cannot be used on this platform" % platform)
    layer = store.layers.ingest(fileobj)
    created = rfc3339nano()
    comment = message or "Imported from %s" % source
    config = apply_changes({}, changes)
    image_config = {
        "architecture": arch,
        "config": config,
        "created": created,
        "comment": comment,
        "history": [{"created": created, "comment": comment}],
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    raw = json.dumps(image_config, separators=(",", ":"), sort_keys=True).encode("utf-8")
    img = store.add_config(raw)
    if target is not None:
        store.tag(img.id, target)
    return img
