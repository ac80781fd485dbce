"""Images resource: list, inspect, history, tag, rmi, prune, load, save, import, pull."""

import logging
import os
import re
import tempfile
import time

from dockyard.engine.api.responses import Response
from dockyard.engine.api.router import version_less
from dockyard.engine.config import registry_certs_dirs
from dockyard.engine.errors import EngineError, InvalidParameter, Unsupported
from dockyard.engine.images import importer, loadsave, reference
from dockyard.engine.images.store import ZERO_TIME, parse_time

log = logging.getLogger("dockyard.engine.images")

LIST_FILTERS = ("dangling", "label", "before", "since", "reference", "until")
PRUNE_FILTERS = ("dangling", "label", "label!", "until")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_CONFIG_KEYS = (
    ("Hostname", ""),
    ("Domainname", ""),
    ("User", ""),
    ("AttachStdin", False),
    ("AttachStdout", False),
    ("AttachStderr", False),
    ("ExposedPorts", None),
    ("Tty", False),
    ("OpenStdin", False),
    ("StdinOnce", False),
    ("Env", None),
    ("Cmd", None),
    ("Image", ""),
    ("Volumes", None),
    ("WorkingDir", ""),
    ("Entrypoint", None),
    ("OnBuild", None),
    ("Labels", None),
)


def register(router, engine):
    router.add("GET", "/images/json", list_images)
    router.add("POST", "/images/load", load_images)
    router.add("GET", "/images/get", save_images)
    router.add("POST", "/images/create", create_image)
    router.add("POST", "/images/prune", prune_images)
    router.add("GET", "/images/search", search_images)
    router.add("GET", "/images/{name:.+}/get", save_image)
    router.add("GET", "/images/{name:.+}/json", inspect_image)
    router.add("GET", "/images/{name:.+}/history", image_history)
    router.add("POST", "/images/{name:.+}/tag", tag_image)
    router.add("POST", "/images/{name:.+}/push", push_image)
    router.add("DELETE", "/images/{name:.+}", delete_image)


def parse_timestamp(text, now=None):
    """moby's filter/query times: unix seconds[.frac], RFC 3339, or a Go duration meaning 'ago'."""
    text = (text or "").strip()
    if not text:
        raise InvalidParameter("empty timestamp")
    m = _DURATION.match(text)
    if m:
        return (now if now is not None else time.time()) - float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    ts = parse_time(text if "T" in text else text + "T00:00:00Z")
    if ts == 0.0:
        raise InvalidParameter('failed to parse value as time or duration: "%s"' % text)
    return ts


def _bool_filter(values, name):
    out = set()
    for v in values:
        lv = v.lower()
        if lv in ("true", "1"):
            out.add(True)
        elif lv in ("false", "0"):
            out.add(False)
        else:
            raise InvalidParameter("Invalid filter '%s=%s'" % (name, v))
    return out


# -- list / inspect / history ----------------------------------------------------------------


def summary(img, api_version):
    size = img.size
    out = {
        "Id": img.id,
        "ParentId": "",
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Created": int(img.created),
        "Size": size,
        "SharedSize": -1,
        "Labels": img.labels or {},
        "Containers": -1,
    }
    if version_less(api_version or "1.50", "1.44"):
        out["VirtualSize"] = size
    return out


def list_images(req):
    store = req.engine.images
    filters = req.filters()
    filters.validate(LIST_FILTERS)
    dangling = _bool_filter(filters.get("dangling"), "dangling") if filters.has("dangling") else None
    labels = filters.label_matcher()
    before = since = until = None
    if filters.has("before"):
        before = min(store.get(r).created for r in filters.get("before"))
    if filters.has("since"):
        since = max(store.get(r).created for r in filters.get("since"))
    if filters.has("until"):
        until = min(parse_timestamp(v) for v in filters.get("until"))
    patterns = filters.get("reference")
    show_all = req.query_bool("all")
    parents = store.parents()
    out = []
    for img in store.list():
        tags = img.repo_tags
        if not show_all and not tags and not img.repo_digests and img.id in parents:
            continue  # an intermediate build step: `docker images -a` shows it (moby)
        if dangling is not None and len(dangling) == 1:
            is_dangling = not tags and not img.repo_digests
            if is_dangling not in dangling:
                continue
        if labels is not None and not labels(img.labels):
            continue
        if before is not None and img.created >= before:
            continue
        if since is not None and img.created <= since:
            continue
        if until is not None and img.created >= until:
            continue
        item = summary(img, req.api_version)
        if patterns:
            matched = [t for t in tags if any(reference.matches(p, t) for p in patterns)]
            if not matched:
                continue
            item["RepoTags"] = matched
        out.append(item)
    out.sort(key=lambda i: (i["Created"], i["Id"]), reverse=True)
    return out


def normalized_config(config):
    out = {}
    for key, default in _CONFIG_KEYS:
        value = config.get(key, default)
        out[key] = value if value is not None or default is None else default
    for key in ("StopSignal", "Healthcheck", "ArgsEscaped", "Shell", "StopTimeout"):
        if config.get(key) not in (None, "", False):
            out[key] = config[key]
    return out


def inspect_payload(store, img, api_version="1.50"):
    cfg = img.config
    layers = img.layers()
    dirs = [l.dir for l in reversed(layers)]  # top first
    data = {}
    if dirs:
        data = {
            "MergedDir": os.path.join(dirs[0], "merged"),
            "UpperDir": os.path.join(dirs[0], "diff"),
            "WorkDir": os.path.join(dirs[0], "work"),
        }
        if len(dirs) > 1:
            data["LowerDir"] = ":".join(os.path.join(d, "diff") for d in dirs[1:])
    out = {
        "Id": img.id,
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Parent": "",
        "Comment": cfg.get("comment") or "",
        "Created": img.created_text,
        "DockerVersion": cfg.get("docker_version") or "",
        "Author": cfg.get("author") or "",
        "Config": normalized_config(img.container_config),
        "Architecture": cfg.get("architecture") or "",
        "Os": cfg.get("os") or "linux",
        "Size": img.size,
        "GraphDriver": {"Name": "overlay2", "Data": data},
        "RootFS": {"Type": "layers", "Layers": img.diff_ids},
        "Metadata": {"LastTagTime": img.meta.get("LastTagTime") or ZERO_TIME},
    }
    if cfg.get("variant"):
        out["Variant"] = cfg["variant"]
    if cfg.get("os.version"):
        out["OsVersion"] = cfg["os.version"]
    if version_less(api_version or "1.50", "1.44"):
        out["VirtualSize"] = out["Size"]
        out["Container"] = cfg.get("container") or ""
        out["ContainerConfig"] = normalized_config(cfg.get("container_config") or {})
    return out


def inspect_image(req):
    store = req.engine.images
    img = store.get(req.params["name"])
    out = inspect_payload(store, img, req.api_version)
    # docker-compose 1.x negotiates the newest API version yet reads ContainerConfig (gone since 1.44)
    # whenever it recreates a container: without it `up` after a change fails with KeyError.
    if (req.headers.get("User-Agent") or "").startswith("docker-compose/1."):
        out.setdefault("ContainerConfig", normalized_config(img.config.get("container_config") or {}))
    return out


def image_history(req):
    store = req.engine.images
    img = store.get(req.params["name"])
    layers = img.layers()
    history = img.config.get("history") or []
    entries = []
    idx = 0
    if history:
        for h in history:
            size = 0
            if not h.get("empty_layer"):
                if idx < len(layers):
                    size = layers[idx].size
                idx += 1
            entries.append(
                {
                    "Id": "<missing>",
                    "Created": int(_created(h, img)),
                    "CreatedBy": h.get("created_by") or "",
                    "Tags": None,
                    "Size": size,
                    "Comment": h.get("comment") or "",
                }
            )
    else:
        for layer in layers:
            entries.append(
                {
                    "Id": "<missing>",
                    "Created": int(img.created),
                    "CreatedBy": "",
                    "Tags": None,
                    "Size": layer.size,
                    "Comment": "",
                }
            )
    if not entries:
        entries.append(
            {"Id": "<missing>", "Created": int(img.created), "CreatedBy": "", "Tags": None, "Size": 0, "Comment": ""}
        )
    entries.reverse()
    entries[0]["Id"] = img.id
    entries[0]["Tags"] = img.repo_tags or None
    if history:
        # Images built here have their steps as parents (moby): each step's entry shows its image.
        parent = store.parent_of(img.id)
        for _ in range(len(entries)):
            if parent is None:
                break
            step = store.by_id(parent)
            index = len(entries) - len(step.config.get("history") or [])
            if 0 < index < len(entries):
                entries[index]["Id"] = step.id
                entries[index]["Tags"] = step.repo_tags or None
            parent = store.parent_of(step.id)
    return entries


def _created(h, img):
    return parse_time(h.get("created")) or img.created


# -- tag / rmi / prune --------------------------------------------------------------------


def tag_image(req):
    store = req.engine.images
    img = store.get(req.params["name"])
    repo = req.query_value("repo", "")
    tag = req.query_value("tag", "")
    if not repo:
        raise InvalidParameter("repository name must have at least one component")
    ref = reference.parse(repo)
    if tag:
        if ref.tag or ref.digest:
            raise InvalidParameter("invalid reference format: cannot give a tag twice")
        ref = reference.parse("%s:%s" % (ref.repo, tag))
    if ref.digest:
        raise InvalidParameter("refusing to create a tag with a digest reference")
    store.tag(img.id, ref)
    return Response(201)


def delete_image(req):
    store = req.engine.images
    force = req.query_bool("force")
    noprune = req.query_bool("noprune")
    return store.delete(req.params["name"], force=force, prune=not noprune)


def prune_images(req):
    store = req.engine.images
    filters = req.filters()
    filters.validate(PRUNE_FILTERS)
    dangling_only = True
    if filters.has("dangling"):
        values = _bool_filter(filters.get("dangling"), "dangling")
        dangling_only = True in values or not values
    until = None
    if filters.has("until"):
        until = min(parse_timestamp(v) for v in filters.get("until"))
    deleted, reclaimed = store.prune(
        dangling_only=dangling_only, until=until, label_filter=filters.label_matcher("label", "label!")
    )
    return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}


def search_images(req):
    raise Unsupported("searching registries is not supported by the dockyard engine")


def push_image(req):
    from dockyard.engine.images import push  # on first use: the registry client stays out of an idle engine

    cfg = req.engine.config
    out = _LazyStream(req, buffer_all=False)
    try:
        push.push(
            req.engine.images,
            req.params["name"],
            req.query_value("tag") or "",
            out.emit,
            req.headers.get("X-Registry-Auth"),
            cfg.insecure_registries,
            policy=(cfg.opts or {}).get("registry-pull", "local"),
            certs_dirs=registry_certs_dirs(cfg),
            max_concurrent=cfg.max_concurrent_uploads,
        )
    except EngineError as exc:
        if out.fail(exc.message):
            return None
        raise
    except Exception as exc:
        log.exception("push of %s failed", req.params["name"])
        if out.fail(str(exc)):
            return None
        raise
    out.flush()
    return None


# -- load / save / import ---------------------------------------------------------------------


def _spool_body(req, store):
    """Stream the request body (often chunked) to a temp file; -> path."""
    fd, path = tempfile.mkstemp(prefix="body-", dir=store.layers.tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = req.body.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path


class _LazyStream:
    """Opens the JSON response stream on the first message, so early errors stay plain HTTP errors."""

    def __init__(self, req, buffer_all):
        self.req = req
        self.buffer_all = buffer_all
        self.pending = []
        self.stream = None

    def emit(self, msg):
        if self.buffer_all:
            self.pending.append(msg)
            return
        self._open()
        self.stream.write_json(msg)

    def _open(self):
        if self.stream is None:
            self.stream = self.req.stream(200, "application/json")

    def flush(self):
        self._open()
        for msg in self.pending:
            self.stream.write_json(msg)
        self.pending = []

    def fail(self, message):
        """In-band error once streaming has begun; False if nothing was sent yet."""
        if self.stream is None:
            return False
        self.stream.write_json({"errorDetail": {"message": message}, "error": message})
        return True


def load_images(req):
    store = req.engine.images
    quiet = req.query_bool("quiet", default=True)
    path = _spool_body(req, store)
    out = _LazyStream(req, buffer_all=quiet)
    try:
        loadsave.load(store, path, out.emit, quiet=quiet)
    except EngineError as exc:
        if out.fail(exc.message):
            return None
        raise
    except Exception as exc:
        log.exception("docker load failed")
        if out.fail(str(exc)):
            return None
        raise
    finally:
        os.unlink(path)
    out.flush()
    return None


def _save(req, names):
    store = req.engine.images
    selection = loadsave.resolve_save_names(store, names)  # 404 before any byte is sent
    if not selection:
        raise InvalidParameter("no images given")
    stream = req.stream(200, "application/x-tar")
    loadsave.save(store, selection, stream)
    return None


def save_images(req):
    return _save(req, [n for n in req.query.get("names", []) if n])


def save_image(req):
    return _save(req, [req.params["name"]])


def create_image(req):
    src = req.query_value("fromSrc")
    if src is not None:
        return import_image(req, src)
    from_image = req.query_value("fromImage")
    if from_image:
        return pull_image(req, from_image, req.query_value("tag") or "")
    raise InvalidParameter("fromImage or fromSrc is required")


def pull_image(req, from_image, tag):
    from dockyard.engine.images import registry  # on first use: the registry client stays out of an idle engine

    store = req.engine.images
    cfg = req.engine.config
    policy = (cfg.opts or {}).get("registry-pull", "local")
    out = _LazyStream(req, buffer_all=False)
    try:
        registry.pull(
            store,
            from_image,
            tag,
            out.emit,
            req.headers.get("X-Registry-Auth"),
            cfg.insecure_registries,
            policy=policy,
            mirrors=cfg.registry_mirrors,
            certs_dirs=registry_certs_dirs(cfg),
            max_concurrent=cfg.max_concurrent_downloads,
        )
    except EngineError as exc:
        if out.fail(exc.message):
            return None
        raise
    except Exception as exc:
        log.exception("pull of %s failed", from_image)
        if out.fail(str(exc)):
            return None
        raise
    if out.stream is None:
        out.flush()
    return None


def import_image(req, src):
    store = req.engine.images
    if src != "-":
        raise InvalidParameter(
            "importing from %s is not supported: send the tarball in the request body (fromSrc=-)" % src
        )
    repo = req.query_value("repo") or None
    tag = req.query_value("tag") or None
    message = req.query_value("message") or ""
    changes = req.query.get("changes", [])
    platform = req.query_value("platform") or None
    path = _spool_body(req, store)
    try:
        with open(path, "rb") as fh:
            img = importer.import_rootfs(
                store, fh, repo=repo, tag=tag, message=message, changes=changes, platform=platform
            )
    finally:
        os.unlink(path)
    stream = req.stream(200, "application/json")
    stream.write_json({"status": img.id})
    return None
