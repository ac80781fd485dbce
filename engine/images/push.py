"""`docker push` and `docker login`: the upload side of the registry client (distribution spec v2).

Push sends each layer as a gzip blob: a blob the registry already has (HEAD) is skipped, one known to
live in another repository of the same registry is mounted from there, anything else is compressed
(layergzip: deterministically, so a re-push yields the same digest) and uploaded, monolithically when small
and in Content-Range chunks otherwise; up to --max-concurrent-uploads layers at once (5, as dockerd). Then the
config blob and a schema2 manifest (OCI when the layers came from OCI manifests) are PUT. Every answer is
read under registry.py's size limits; credentials reach only the registry's own host.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlencode, urljoin, urlsplit

from dockyard.engine.errors import EngineError, NotFound
from dockyard.engine.images import digest, distmeta, layergzip, reference
from dockyard.engine.images.registry import (
    MAX_ERROR_BODY,
    Registry,
    RegistryError,
    check_policy,
    decode_auth,
    error_detail,
    split_repository,
)

log = logging.getLogger("dockyard.engine.images")

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA2_CONFIG = "application/vnd.docker.container.image.v1+json"
SCHEMA2_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MONOLITHIC_MAX = 4 << 20  # blobs up to this size go in one PUT; larger ones in PATCH chunks
CHUNK_SIZE = 16 << 20
MAX_CONCURRENT_UPLOADS = 5  # dockerd's default max-concurrent-uploads

_DENIED = {401: "unauthorized: authentication required", 403: "denied: requested access to the resource is denied"}

Emit = Callable[[Dict[str, Any]], None]


def _short(diff_id: str) -> str:
    return diff_id.split(":", 1)[-1][:12]


class _HashingWriter:
    """A file that hashes and counts what is written to it."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()


def compress_layer(layer, tmp) -> Tuple[str, int]:
    """gzip the layer's tar into the file `tmp` (layergzip: the same bytes every time); -> (digest, size)."""
    sink = _HashingWriter(tmp)
    with layer.open_tar() as src:
        layergzip.gzip_to(src, sink.write)
    tmp.flush()
    return "sha256:" + sink.sha.hexdigest(), sink.size


class Uploader:
    """Blob and manifest uploads to one repository of one registry."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def _fail(self, resp, what: str) -> RegistryError:
        try:
            body = resp.read_limited(MAX_ERROR_BODY, "the registry's error answer")
        finally:
            resp.close()
        detail = error_detail(body)
        if resp.status in (401, 403):
            return RegistryError(detail or _DENIED[resp.status])
        return RegistryError(
            "registry %s answered %d to %s%s" % (self.reg.host, resp.status, what, (": " + detail) if detail else "")
        )

    def _drain(self, resp) -> None:
        try:
            resp.read_limited(MAX_ERROR_BODY, "the registry's answer")
        finally:
            resp.close()

    def settle(self) -> None:
        """GET /v2/ once before the parallel uploads (dockerd pings first too): the scheme (HTTPS, or plain
        HTTP for an insecure registry without TLS) and any token are found by one request, not raced by the
        upload threads, where a HEAD still on HTTPS failed once another thread had switched to HTTP."""
        self._drain(self.reg.request("/v2/"))

    def exists(self, blob_digest: str) -> bool:
        resp = self.reg.request("/v2/%s/blobs/%s" % (self.reg.repository, blob_digest), method="HEAD")
        resp.close()  # a HEAD answer has no body
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        if resp.status in (401, 403):
            raise RegistryError(_DENIED[resp.status])  # a HEAD answer carries no error body
        raise RegistryError("registry %s answered %d to HEAD of blob %s" % (self.reg.host, resp.status, blob_digest))

    def _location(self, resp, base: str) -> str:
        loc = resp.headers.get("location")
        if not loc or any(c in loc for c in "\r\n"):
            raise RegistryError("registry %s gave no upload location" % self.reg.host)
        url = urljoin(base, loc)
        if urlsplit(url).scheme not in ("http", "https"):
            raise RegistryError("registry %s gave an upload location that is not http(s)" % self.reg.host)
        return url

    def start(self, mount: Optional[Tuple[str, str]] = None) -> Optional[str]:
        """Open an upload session; -> its URL, or None when `mount` (digest, from-repo) was mounted."""
        path = "/v2/%s/blobs/uploads/" % self.reg.repository
        if mount:
            path += "?" + urlencode({"mount": mount[0], "from": mount[1]})
        resp = self.reg.request(path, method="POST", body=b"")
        if mount and resp.status == 201:
            self._drain(resp)
            return None
        if resp.status != 202:
            raise self._fail(resp, "a blob upload")
        url = self._location(resp, self.reg.base_url() + path)
        self._drain(resp)
        return url

    def upload(self, fileobj, blob_digest: str, size: int, progress: Callable[[int], None]) -> None:
        """Upload `size` bytes of fileobj as blob_digest: one PUT when small, PATCH chunks otherwise."""
        url = self.start()
        assert url is not None
        fileobj.seek(0)
        if size > MONOLITHIC_MAX:
            done = 0
            while done < size:
                chunk = fileobj.read(min(CHUNK_SIZE, size - done))
                if not chunk:
                    raise RegistryError("blob %s ended early while uploading" % blob_digest)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": "%d-%d" % (done, done + len(chunk) - 1),
                }
                resp = self.reg.request(url, method="PATCH", body=chunk, headers=headers)
                if resp.status != 202:
                    raise self._fail(resp, "a blob chunk upload")
                url = self._location(resp, url)
                self._drain(resp)
                done += len(chunk)
                progress(done)
            body: Any = b""
        else:
            body = fileobj.read(size)
        sep = "&" if urlsplit(url).query else "?"
        resp = self.reg.request(
            url + sep + urlencode({"digest": blob_digest}),
            method="PUT",
            body=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        if resp.status != 201:
            raise self._fail(resp, "the end of a blob upload")
        self._drain(resp)
        progress(size)

    def put_manifest(self, tag: str, media_type: str, raw: bytes) -> None:
        resp = self.reg.request(
            "/v2/%s/manifests/%s" % (self.reg.repository, tag),
            method="PUT",
            body=raw,
            headers={"Content-Type": media_type},
        )
        if resp.status != 201:
            raise self._fail(resp, "the manifest")
        self._drain(resp)


def _push_layer(store, up: Uploader, known, layer, source: str, repo_path: str, oci: bool, emit: Emit) -> dict:
    """One layer's blob in the registry; -> its manifest descriptor."""
    sid = _short(layer.diff_id)
    media = OCI_LAYER if oci else SCHEMA2_LAYER
    host = source.split("/", 1)[0]
    for blob in known.blobs(layer.diff_id):
        if up.exists(blob["digest"]):
            emit({"status": "Layer already exists", "progressDetail": {}, "id": sid})
            known.add(layer.diff_id, blob["digest"], blob["size"], blob["mediaType"], source)
            return {"mediaType": media, "size": blob["size"], "digest": blob["digest"]}
        for src in blob["sources"]:
            src_host, _, src_repo = src.partition("/")
            if src_host != host or src_repo == repo_path or not src_repo:
                continue
            try:
                reference.parse(src_repo)  # a record on disk: only a valid repository name is sent
            except EngineError:
                continue
            url = up.start(mount=(blob["digest"], src_repo))
            if url is None:
                emit({"status": "Mounted from %s" % src_repo, "progressDetail": {}, "id": sid})
                known.add(layer.diff_id, blob["digest"], blob["size"], blob["mediaType"], source)
                return {"mediaType": media, "size": blob["size"], "digest": blob["digest"]}
            break  # the registry opened a plain upload instead: upload below
    with tempfile.TemporaryFile(dir=store.layers.tmp) as tmp:
        blob_digest, size = compress_layer(layer, tmp)
        if up.exists(blob_digest):
            emit({"status": "Layer already exists", "progressDetail": {}, "id": sid})
        else:

            def progress(done, sid=sid, size=size):
                emit({"status": "Pushing", "progressDetail": {"current": done, "total": size}, "id": sid})

            up.upload(tmp, blob_digest, size, progress)
            emit({"status": "Pushed", "progressDetail": {}, "id": sid})
    known.add(layer.diff_id, blob_digest, size, media, source)
    return {"mediaType": media, "size": size, "digest": blob_digest}


def _tags_to_push(store, repo: str, tag: str) -> List[Tuple[str, Any]]:
    if tag:
        ref = reference.parse("%s:%s" % (repo, tag))
        try:
            return [(tag, store.get(ref.tagged))]
        except NotFound:
            raise NotFound("tag does not exist: %s" % ref.tagged) from None
    found = []
    for tagged in sorted(store.all_tags()):
        name, _, t = tagged.rpartition(":")
        if name == repo:
            found.append((t, store.get(tagged)))
    if not found:
        raise NotFound("An image does not exist locally with the tag: %s" % repo)
    return found


def _push_layers(store, up: Uploader, known, layers, source, repo_path, oci, emit: Emit, max_concurrent) -> dict:
    """Every distinct layer's blob in the registry, up to max_concurrent at once (the engine's
    --max-concurrent-uploads); -> {diff ID: manifest descriptor}. The first failure is raised once the
    uploads under way have ended; layers not started by then are not started."""
    pending = list({layer.diff_id: layer for layer in reversed(layers)}.values())
    for i, layer in enumerate(pending):
        if i >= max_concurrent:
            emit({"status": "Waiting", "progressDetail": {}, "id": _short(layer.diff_id)})
    lock = threading.Lock()

    def emit_locked(msg):  # uploads report from several threads
        with lock:
            emit(msg)

    workers = max(1, min(max_concurrent, len(pending)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push") as pool:
        futures = [
            (layer.diff_id, pool.submit(_push_layer, store, up, known, layer, source, repo_path, oci, emit_locked))
            for layer in pending
        ]
        descs, errors = {}, []
        for diff_id, fut in futures:
            try:
                descs[diff_id] = fut.result()
            except BaseException as exc:  # noqa: BLE001 - raised below, after the others stopped
                errors.append(exc)
                for _, other in futures:
                    other.cancel()
    if errors:
        raise errors[0]
    return descs


def push(
    store,
    name: str,
    tag: str,
    emit: Emit,
    auth_header=None,
    insecure_registries=(),
    policy="local",
    certs_dirs=(),
    max_concurrent: int = MAX_CONCURRENT_UPLOADS,
) -> None:
    """Push repo `name` (tag, or every local tag of it when tag is ""); emit(dict) gets moby's progress JSON."""
    ref = reference.parse(name)
    if ref.digest:
        raise NotFound("cannot push a digest reference")
    if ref.tag and not tag:
        tag = ref.tag
    repo = ref.repo
    host, repo_path = split_repository(repo)
    targets = _tags_to_push(store, repo, tag)  # 404 before anything is contacted
    check_policy(host, repo, policy, insecure_registries, action="push")
    known = distmeta.DistributionMetadata(store.root)
    mounts = set()
    for _, img in targets:
        for diff_id in img.diff_ids:
            for blob in known.blobs(diff_id):
                for src in blob["sources"]:
                    src_host, _, src_repo = src.partition("/")
                    if src_host == host and src_repo and src_repo != repo_path:
                        mounts.add(src_repo)
    scope = ["repository:%s:pull,push" % repo_path] + ["repository:%s:pull" % r for r in sorted(mounts)[:8]]
    reg = Registry(host, repo_path, decode_auth(auth_header), insecure_registries, scope=scope, certs_dirs=certs_dirs)
    up = Uploader(reg)
    source = "%s/%s" % (host, repo_path)
    emit({"status": "The push refers to repository [%s]" % ref.full_name()})
    up.settle()
    for push_tag, img in targets:
        layers = [store.layers.get(d) for d in img.diff_ids]
        # OCI manifest when every layer came from an OCI manifest (a pulled OCI image stays OCI)
        oci = bool(layers) and all(
            any(b["mediaType"] == OCI_LAYER for b in known.blobs(layer.diff_id)) for layer in layers
        )
        for layer in reversed(layers):
            emit({"status": "Preparing", "progressDetail": {}, "id": _short(layer.diff_id)})
        descs = _push_layers(store, up, known, layers, source, repo_path, oci, emit, max_concurrent)
        config_digest = digest.of_bytes(img.raw_config)
        if not up.exists(config_digest):
            up.upload(_BytesFile(img.raw_config), config_digest, len(img.raw_config), lambda done: None)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else SCHEMA2,
            "config": {
                "mediaType": OCI_CONFIG if oci else SCHEMA2_CONFIG,
                "size": len(img.raw_config),
                "digest": config_digest,
            },
            "layers": [descs[layer.diff_id] for layer in layers],
        }
        raw = json.dumps(manifest, indent=3).encode()
        up.put_manifest(push_tag, OCI_MANIFEST if oci else SCHEMA2, raw)
        manifest_digest = digest.of_bytes(raw)
        store.add_digest(img.id, repo, manifest_digest)
        emit({"status": "%s: digest: %s size: %d" % (push_tag, manifest_digest, len(raw))})
        emit({"progressDetail": {}, "aux": {"Tag": push_tag, "Digest": manifest_digest, "Size": len(raw)}})


class _BytesFile:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos : end]
        self.pos += len(out)
        return out


def login(auth: dict, insecure_registries=(), policy="local", certs_dirs=()) -> Tuple[bool, str]:
    """Check credentials against a registry's /v2/ (basic or token auth); -> (ok, the reason if not)."""
    server = str(auth.get("serveraddress") or "")
    host = urlsplit(server).netloc if "://" in server else server.split("/", 1)[0]
    if not host or host in ("index.docker.io", "docker.io"):
        host = "registry-1.docker.io"
    if any(c in host for c in " \r\n\t@"):
        raise RegistryError("invalid registry address %.100r" % server)
    check_policy(host, host, policy, insecure_registries, action="login")
    reg = Registry(host, "", auth, insecure_registries, scope=[], certs_dirs=certs_dirs)
    resp = reg.request("/v2/")
    try:
        body = resp.read_limited(MAX_ERROR_BODY, "the registry's answer")
    finally:
        resp.close()
    if resp.status == 200:
        return True, ""
    detail = error_detail(body)
    return False, "login attempt to %s/v2/ failed with status: %d %s%s" % (
        reg.base_url(),
        resp.status,
        resp.resp.reason or "",
        (" (%s)" % detail) if detail else "",
    )
