"""GET /distribution/{name}/json: what a registry says of an image (docker-py's
`images.get_registry_data`, `docker service create` in dockerd): the manifest's descriptor and the
platforms it serves, without pulling anything.

The engine's pull policy applies (only loopback and --insecure-registry registries unless
registry-pull=all), credentials come from X-Registry-Auth, and every manifest digest is checked as a
pull checks it (engine/images/registry.py).
"""

from __future__ import annotations

import io
import json

from dockyard.engine.config import registry_certs_dirs
from dockyard.engine.errors import NotFound
from dockyard.engine.images import digest, reference, registry

MAX_CONFIG_FOR_PLATFORM = 8 << 20  # the same bound a pull puts on image configs


def register(router, engine):
    router.add("GET", "/distribution/{name:.*}/json", inspect_distribution)


def inspect_distribution(req):
    cfg = req.engine.config
    ref = reference.parse(req.params["name"], default_tag=True)
    host, repo_path = registry.split_repository(ref.repo)
    policy = (cfg.opts or {}).get("registry-pull", "local")
    if policy != "all" and not registry.is_insecure(host, cfg.insecure_registries):
        raise NotFound(
            "this engine only reaches local registries (start it with --opt registry-pull=all to reach %s)" % host
        )
    if ref.digest:
        digest.check(ref.digest, "manifest digest")
    reg = registry.Registry(
        host,
        repo_path,
        registry.decode_auth(req.headers.get("X-Registry-Auth")),
        cfg.insecure_registries,
        certs_dirs=registry_certs_dirs(cfg),
    )
    mediatype, raw, manifest_digest, doc = reg.manifest(ref.digest or ref.tag)
    if "manifests" in doc:
        platforms = [_platform(desc.get("platform")) for desc in _descriptors(doc.get("manifests"))]
    else:
        platforms = [_config_platform(reg, doc)]
    return {
        "Descriptor": {"mediaType": mediatype, "digest": manifest_digest, "size": len(raw)},
        "Platforms": [p for p in platforms if p],
    }


def _descriptors(value):
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise registry.RegistryError("registry sent an invalid image index")
    return value


def _platform(plat):
    """An OCI platform object, the fields of the wrong type dropped."""
    if not isinstance(plat, dict):
        return None
    out = {}
    for key in ("architecture", "os", "os.version", "variant"):
        if isinstance(plat.get(key), str) and plat[key]:
            out[key] = plat[key]
    if isinstance(plat.get("os.features"), list):
        out["os.features"] = [f for f in plat["os.features"] if isinstance(f, str)]
    return out or None


def _config_platform(reg, doc):
    """A single manifest names no platform: its image config does (fetched, bounded, digest-checked)."""
    config = doc.get("config")
    if not isinstance(config, dict):
        return None
    size = config.get("size")
    if not isinstance(size, int) or size < 0 or size > MAX_CONFIG_FOR_PLATFORM:
        raise registry.RegistryError("registry sent an invalid config descriptor")
    buf = io.BytesIO()
    reg.blob(digest.check(config.get("digest"), "config digest"), buf, limit=size)
    try:
        parsed = json.loads(buf.getvalue().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise registry.RegistryError("invalid image config in the registry") from None
    return _platform(parsed) if isinstance(parsed, dict) else None
