"""`docker pull`: a registry (distribution spec v2) client on the standard library.

Resolves the reference, fetches the manifest (an index/manifest list is narrowed
to linux/<this arch>), the config and each layer blob, verifying every digest,
then ingests the layers and records tag and repo digest. Bearer-token and basic
auth are supported (X-Registry-Auth), redirects are followed without leaking
Authorization to another host, and localhost, 127.0.0.0/8 and --insecure-registry
entries are spoken to over plain HTTP.
"""

import base64
import hashlib
import http.client
import ipaddress
import json
import logging
import re
import ssl
import tempfile
from urllib.parse import urlencode, urljoin, urlsplit

from dockyard.engine import hostinfo
from dockyard.engine.errors import InvalidParameter, NotFound, SystemFailure
from dockyard.engine.images import reference

log = logging.getLogger("dockyard.engine.images")

DOCKER_HUB = "registry-1.docker.io"
TIMEOUT = 60
MAX_REDIRECTS = 5
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(SystemFailure):
    """Talking to a registry failed (network, auth, a bad answer)."""


def decode_auth(header):
    """X-Registry-Auth (URL-safe base64 JSON) -> dict; {} when absent or unreadable."""
    if not header:
        return {}
    try:
        padded = header + "=" * (-len(header) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def split_repository(repo):
    """Familiar repo -> (registry host, repository path): 'busybox' -> (registry-1.docker.io, library/busybox)."""
    domain, path, _ = reference.familiar_repo(repo)
    if domain == reference.DEFAULT_DOMAIN:
        if "/" not in path:
            path = "library/" + path
        return DOCKER_HUB, path
    return domain, path


def is_insecure(host, insecure_registries=()):
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return True
    for entry in insecure_registries or ():
        if entry == host or entry == name:
            return True
        if ip is not None and "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


class _Response:
    def __init__(self, conn, resp):
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}

    def read(self, n=-1):
        return self.resp.read() if n is None or n < 0 else self.resp.read(n)

    def close(self):
        self.conn.close()


class Registry:
    """One registry host for one repository (scope of the pull token)."""

    def __init__(self, host, repository, auth=None, insecure_registries=()):
        self.host = host
        self.repository = repository
        self.auth = auth or {}
        self.scheme = "http" if is_insecure(host, insecure_registries) else "https"
        self.token = None
        self.basic = None

    # -- HTTP -----------------------------------------------------------------------------
    def _open(self, method, url, headers):
        parts = urlsplit(url)
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=TIMEOUT, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, headers=headers)
        return _Response(conn, conn.getresponse())

    def request(self, path, accept=None, allow_auth=True):
        url = "%s://%s%s" % (self.scheme, self.host, path)
        headers = {"User-Agent": "dockyard-engine"}
        if accept:
            headers["Accept"] = ", ".join(accept)
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        elif self.basic:
            headers["Authorization"] = "Basic " + self.basic
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._open("GET", url, headers)
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                raise RegistryError("error contacting registry %s: %s" % (self.host, exc)) from None
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("location"):
                resp.close()
                url = urljoin(url, resp.headers["location"])
                if urlsplit(url).netloc != origin:
                    headers.pop("Authorization", None)  # never hand credentials to a CDN
                continue
            if resp.status == 401 and allow_auth and self._authenticate(resp.headers.get("www-authenticate", "")):
                resp.close()
                return self.request(path, accept, allow_auth=False)
            return resp
        raise RegistryError("too many redirects fetching %s" % path)

    def _authenticate(self, challenge):
        scheme, _, params = challenge.partition(" ")
        fields = dict(_CHALLENGE.findall(params))
        user, password = self.auth.get("username"), self.auth.get("password")
        if scheme.lower() == "basic":
            if not user:
                return False
            self.basic = base64.b64encode(("%s:%s" % (user, password or "")).encode()).decode()
            return True
        if scheme.lower() != "bearer" or "realm" not in fields:
            return False
        query = {"scope": "repository:%s:pull" % self.repository}
        if fields.get("service"):
            query["service"] = fields["service"]
        url = fields["realm"] + ("&" if "?" in fields["realm"] else "?") + urlencode(query)
        headers = {"User-Agent": "dockyard-engine"}
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % (user, password or "")).encode()).decode()
        elif self.auth.get("registrytoken"):
            self.token = self.auth["registrytoken"]
            return True
        try:
            resp = self._open("GET", url, headers)
            body = resp.read()
            resp.close()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise RegistryError("error fetching a registry token from %s: %s" % (fields["realm"], exc)) from None
        if resp.status != 200:
            return False
        try:
            data = json.loads(body.decode("utf-8"))
        except ValueError:
            return False
        self.token = data.get("token") or data.get("access_token")
        return bool(self.token)

    # -- distribution API ---------------------------------------------------------------------
    def manifest(self, ref):
        """(media type, raw bytes, digest) of the manifest for a tag or digest."""
        resp = self.request("/v2/%s/manifests/%s" % (self.repository, ref), accept=MANIFEST_TYPES)
        body = resp.read()
        resp.close()
        if resp.status == 200:
            digest = resp.headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(body).hexdigest()
            if ref.startswith("sha256:") and "sha256:" + hashlib.sha256(body).hexdigest() != ref:
                raise RegistryError("manifest digest mismatch for %s" % ref)
            mediatype = (resp.headers.get("content-type") or "").split(";")[0].strip()
            try:
                doc = json.loads(body.decode("utf-8"))
            except ValueError:
                raise RegistryError("registry sent an invalid manifest") from None
            return doc.get("mediaType") or mediatype, body, digest, doc
        return self._error(resp.status, body, ref)

    def _error(self, status, body, ref):
        detail = ""
        try:
            errs = json.loads(body.decode("utf-8")).get("errors") or []
            detail = (
                ": ".join(filter(None, [errs[0].get("code", "").lower().replace("_", " "), errs[0].get("message", "")]))
                if errs
                else ""
            )
        except (ValueError, AttributeError, UnicodeDecodeError):
            pass
        if status in (401, 403) or (status == 404 and "name unknown" in detail):
            raise NotFound(
                "pull access denied for %s, repository does not exist or may require "
                "'docker login'%s" % (self.repository, (": " + detail) if detail else "")
            )
        if status == 404:
            raise NotFound("manifest for %s:%s not found: %s" % (self.repository, ref, detail or "manifest unknown"))
        raise RegistryError("registry %s answered %d for %s %s" % (self.host, status, ref, detail))

    def blob(self, digest, out, progress=None):
        """Download a blob into the file object `out`, checking its digest; returns its size."""
        resp = self.request("/v2/%s/blobs/%s" % (self.repository, digest))
        if resp.status != 200:
            body = resp.read()
            resp.close()
            self._error(resp.status, body, digest)
        algo, _, want = digest.partition(":")
        if algo != "sha256":
            resp.close()
            raise RegistryError("unsupported digest algorithm %s" % algo)
        sha = hashlib.sha256()
        total = 0
        try:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                sha.update(chunk)
                out.write(chunk)
                total += len(chunk)
                if progress:
                    progress(total)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError("error downloading %s: %s" % (digest, exc)) from None
        finally:
            resp.close()
        if sha.hexdigest() != want:
            raise RegistryError("blob %s failed verification: got sha256:%s" % (digest, sha.hexdigest()))
        return total


def _pick_platform(index):
    arch = hostinfo.go_arch()
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        if plat.get("os") == "linux" and plat.get("architecture") == arch:
            return desc["digest"]
    raise NotFound("no matching manifest for linux/%s in the manifest list entries" % arch)


def pull(store, from_image, tag, emit, auth_header=None, insecure_registries=(), policy="local"):
    """Pull one image; emit(dict) gets moby's JSON progress messages. Returns the Image.

    policy "local" (the default) only reaches registries on loopback and those given
    with --insecure-registry; "all" also docker.io and any other registry.
    """
    ref_text = from_image
    if tag:
        ref_text += ("@" if tag.startswith("sha256:") else ":") + tag
    ref = reference.parse(ref_text, default_tag=True)
    host, repo_path = split_repository(ref.repo)
    if policy != "all" and not is_insecure(host, insecure_registries):
        raise NotFound(
            "pull access denied for %s: this engine only pulls from local registries "
            "(start it with --opt registry-pull=all to reach %s); load the image with "
            "`docker load` instead" % (ref.repo, host)
        )
    reg = Registry(host, repo_path, decode_auth(auth_header), insecure_registries)
    wanted = ref.digest or ref.tag
    mediatype, raw, digest, doc = reg.manifest(wanted)
    if mediatype in INDEX_TYPES or "manifests" in doc:
        mediatype, raw, digest, doc = reg.manifest(_pick_platform(doc))
    if doc.get("schemaVersion") == 1 or "config" not in doc:
        raise InvalidParameter("unsupported manifest format (schema 1): the image must be re-pushed")
    shown = ref.tag or ref.digest
    emit({"status": "Pulling from %s" % repo_path, "id": shown})

    cfg_buf = _Buffer()
    reg.blob(doc["config"]["digest"], cfg_buf)
    config_raw = cfg_buf.getvalue()
    try:
        config = json.loads(config_raw.decode("utf-8"))
    except ValueError:
        raise RegistryError("invalid image config in the registry") from None
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = doc.get("layers") or []
    if len(diff_ids) != len(layers):
        raise RegistryError("manifest has %d layers but the config %d" % (len(layers), len(diff_ids)))
    image_id = "sha256:" + hashlib.sha256(config_raw).hexdigest()
    up_to_date = store.exists(image_id)
    for desc, diff_id in zip(layers, diff_ids):
        sid = desc["digest"].split(":", 1)[-1][:12]
        if store.layers.exists(diff_id):
            emit({"status": "Already exists", "progressDetail": {}, "id": sid})
            continue
        emit({"status": "Pulling fs layer", "progressDetail": {}, "id": sid})
        size = int(desc.get("size") or 0)
        with tempfile.TemporaryFile(dir=store.layers.tmp) as tmp:

            def progress(done, sid=sid, size=size):
                emit({"status": "Downloading", "progressDetail": {"current": done, "total": size}, "id": sid})

            reg.blob(desc["digest"], tmp, progress if size > (1 << 20) else None)
            emit({"status": "Download complete", "progressDetail": {}, "id": sid})
            tmp.seek(0)
            emit({"status": "Extracting", "progressDetail": {"current": size, "total": size}, "id": sid})
            store.layers.ingest(tmp, expected=diff_id)
        emit({"status": "Pull complete", "progressDetail": {}, "id": sid})
    img = store.add_config(config_raw)
    if ref.tag:
        store.tag(img.id, reference.Reference(ref.repo, ref.tag))
    store.add_digest(img.id, ref.repo, digest)
    emit({"status": "Digest: %s" % digest})
    state = "Image is up to date for" if up_to_date else "Downloaded newer image for"
    emit({"status": "Status: %s %s" % (state, ref.tagged if ref.tag else "%s@%s" % (ref.repo, ref.digest))})
    return img


class _Buffer:
    def __init__(self, limit=16 << 20):
        self.parts = []
        self.size = 0
        self.limit = limit

    def write(self, data):
        self.size += len(data)
        if self.size > self.limit:
            raise RegistryError("image config is too large")
        self.parts.append(data)

    def getvalue(self):
        return b"".join(self.parts)
