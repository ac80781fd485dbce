"""`docker pull`: a registry (distribution spec v2) client on the standard library.

Resolves the reference, fetches the manifest (an index/manifest list is narrowed
to linux/<this arch>), the config and each layer blob, verifying every digest,
then ingests the layers and records tag and repo digest. Nothing the registry
says about content is trusted: a manifest's digest is the sha256 of its bytes
(a Docker-Content-Digest header that disagrees is an error, a pull by digest
must get exactly those bytes), blobs are hashed as they stream and cut off at
their descriptor's size, and manifests, tokens, configs and error bodies have
size limits. Bearer-token and basic
auth are supported (X-Registry-Auth), redirects are followed without leaking
Authorization to another host. TLS trusts the system CAs plus certs.d/<host:port>/*.crt
and presents certs.d client pairs (*.cert + *.key), as Docker does; --insecure-registry
hosts, and localhost, 127.0.0.0/8 and ::1 without a certs.d directory, are tried over HTTPS
without verification, then plain HTTP (dockerd's order). Layer downloads
(parallel, resumable, shared between pulls) are engine/images/download.py's.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import ssl
import threading
from urllib.parse import urlencode, urljoin, urlsplit

from dockyard.engine import hostinfo
from dockyard.engine.errors import InvalidParameter, NotFound, SystemFailure
from dockyard.engine.images import digest, distmeta, download, reference
from dockyard.engine.images.store import config_diff_ids

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
MAX_MANIFEST = 4 << 20  # manifests and indexes (containerd's limit)
MAX_TOKEN = 1 << 20  # token endpoint answers
MAX_CONFIG = 8 << 20  # image config blobs
MAX_ERROR_BODY = 64 << 10  # error answers are only shown, never kept
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


def listed_insecure(host, insecure_registries=()):
    """True if the operator named host (or a non-loopback network holding it) with --insecure-registry.

    Loopback hosts that are not named explicitly keep plain HTTP (they are insecure by default).
    """
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if any(entry in (host, name.strip("[]")) for entry in insecure_registries or ()):
        return True
    return is_insecure(host, insecure_registries) and not is_insecure(host)


def certs_dir_for(host, certs_dirs=()):
    """The first certs.d/<host> directory that exists, or None; host is a checked registry domain."""
    if not host or "/" in host or "\\" in host or host.startswith("."):
        return None
    for base in certs_dirs or ():
        path = os.path.join(base, host)
        if os.path.isdir(path):
            return path
    return None


def tls_context(host, certs_dirs=(), verify=True):
    """An SSLContext for host: system CAs plus certs.d/<host>/*.crt, client pairs *.cert + *.key."""
    ctx = ssl.create_default_context()
    hostdir = certs_dir_for(host, certs_dirs)
    if hostdir:
        try:
            names = sorted(os.listdir(hostdir))
            for name in names:
                path = os.path.join(hostdir, name)
                if name.endswith(".crt"):
                    ctx.load_verify_locations(cafile=path)
                elif name.endswith(".cert"):
                    key = name[: -len(".cert")] + ".key"
                    if key not in names:
                        raise RegistryError("missing key %s for client certificate %s" % (key, name))
                    ctx.load_cert_chain(path, os.path.join(hostdir, key))
                elif name.endswith(".key") and name[: -len(".key")] + ".cert" not in names:
                    raise RegistryError("missing client certificate %s.cert for key %s" % (name[:-4], name))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError("bad TLS files in %s: %s" % (hostdir, exc)) from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Response:
    def __init__(self, conn, resp):
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}

    def read(self, n=-1):
        return self.resp.read() if n is None or n < 0 else self.resp.read(n)

    def read_limited(self, limit, what):
        """The whole body, refused (RegistryError) when it is longer than limit bytes."""
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            self.close()
            raise RegistryError("%s is too large (%s bytes, the limit is %d)" % (what, length, limit))
        try:
            body = self.resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError("error reading %s: %s" % (what, exc)) from None
        if len(body) > limit:
            self.close()
            raise RegistryError("%s is too large (more than %d bytes)" % (what, limit))
        return body

    def close(self):
        self.conn.close()


class Registry:
    """One registry host for one repository (scope of the pull token)."""

    def __init__(self, host, repository, auth=None, insecure_registries=(), scope=None, certs_dirs=()):
        self.host = host
        self.repository = repository
        self.auth = auth or {}
        # the token's scope: pull only, unless a push asks for more (its own repo and mount sources)
        self.scope = scope or ["repository:%s:pull" % repository]
        self.certs_dirs = tuple(certs_dirs or ())
        # --insecure-registry hosts and loopback ones (localhost, 127.0.0.0/8, ::1: insecure by default, as
        # dockerd's InsecureRegistryCIDRs) without a certs.d directory: HTTPS without verification first,
        # plain HTTP if that fails (dockerd's order); anything else, and loopback with certs.d: verified HTTPS
        self.verify_tls = True
        self.http_fallback = False
        if listed_insecure(host, insecure_registries) or (
            is_insecure(host) and not certs_dir_for(host, self.certs_dirs)
        ):
            self.scheme, self.verify_tls, self.http_fallback = "https", False, True
        else:
            self.scheme = "https"
        self.token = None
        self.basic = None
        self._tls = None

    # -- HTTP -----------------------------------------------------------------------------
    def _open(self, method, url, headers, body=None):
        parts = urlsplit(url)
        if parts.scheme == "https":
            if parts.netloc != self.host:
                ctx = ssl.create_default_context()  # a CDN or token host: the system CAs
            else:
                if self._tls is None:
                    self._tls = tls_context(self.host, self.certs_dirs, self.verify_tls)
                ctx = self._tls
            conn = http.client.HTTPSConnection(parts.netloc, timeout=TIMEOUT, context=ctx)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if body is not None and hasattr(body, "seek"):
            body.seek(0)  # a retry after a 401 sends the whole body again
        conn.request(method, path, body=body, headers=headers)
        return _Response(conn, conn.getresponse())

    def base_url(self):
        return "%s://%s" % (self.scheme, self.host)

    def request(self, path, accept=None, allow_auth=True, method="GET", body=None, headers=None):
        """One request to this registry; `path` may also be an absolute URL (an upload Location).

        Credentials go only to the registry's own host, never to a host a Location or redirect names.
        """
        url = path if "://" in path else "%s%s" % (self.base_url(), path)
        if urlsplit(url).scheme not in ("http", "https"):
            raise RegistryError("registry %s named a URL that is not http(s)" % self.host)
        sent = {"User-Agent": "dockyard-engine"}
        sent.update(headers or {})
        if accept:
            sent["Accept"] = ", ".join(accept)
        origin = urlsplit(self.base_url()).netloc
        if urlsplit(url).netloc == origin:
            if self.token:
                sent["Authorization"] = "Bearer " + self.token
            elif self.basic:
                sent["Authorization"] = "Basic " + self.basic
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._open(method, url, sent, body)
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                if self.http_fallback and url.startswith("https://%s/" % self.host):
                    # an insecure (listed or loopback) host that does not speak TLS: plain HTTP from now on
                    log.info("registry %s: HTTPS failed (%s), trying plain HTTP", self.host, exc)
                    self.http_fallback = False
                    self.scheme = "http"
                    return self.request(path, accept, allow_auth, method, body, headers)
                raise RegistryError("error contacting registry %s: %s" % (self.host, exc)) from None
            self.http_fallback = False  # the scheme answered: keep it
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("location"):
                resp.close()
                url = urljoin(url, resp.headers["location"])
                if urlsplit(url).netloc != origin:
                    sent.pop("Authorization", None)  # never hand credentials to a CDN
                continue
            if resp.status == 401 and allow_auth and self._authenticate(resp.headers.get("www-authenticate", "")):
                resp.close()
                return self.request(path, accept, False, method, body, headers)
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
        query = [("scope", s) for s in self.scope]
        if fields.get("service"):
            query.append(("service", fields["service"]))
        if user:
            query.append(("account", user))
        url = fields["realm"] + ("&" if "?" in fields["realm"] else "?") + urlencode(query)
        headers = {"User-Agent": "dockyard-engine"}
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % (user, password or "")).encode()).decode()
        elif self.auth.get("registrytoken"):
            self.token = self.auth["registrytoken"]
            return True
        try:
            resp = self._open("GET", url, headers)
            try:
                body = resp.read_limited(MAX_TOKEN, "the token answer from %s" % fields["realm"])
            finally:
                resp.close()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise RegistryError("error fetching a registry token from %s: %s" % (fields["realm"], exc)) from None
        if resp.status != 200:
            return False
        try:
            data = json.loads(body.decode("utf-8"))
        except ValueError:
            return False
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            return False
        self.token = token
        return True

    # -- distribution API ---------------------------------------------------------------------
    def manifest(self, ref):
        """(media type, raw bytes, digest, parsed) of the manifest for a tag or a sha256 digest.

        The digest is always the sha256 of the bytes received: for a digest ref it must be that
        digest, for a tag the registry's Docker-Content-Digest header (if sent) must agree.
        """
        resp = self.request("/v2/%s/manifests/%s" % (self.repository, ref), accept=MANIFEST_TYPES)
        try:
            if resp.status != 200:
                body = resp.read_limited(MAX_ERROR_BODY, "the registry's error answer")
                return self.raise_error(resp.status, body, ref)
            body = resp.read_limited(MAX_MANIFEST, "manifest %s" % ref)
        finally:
            resp.close()
        got = digest.of_bytes(body)
        if ref.startswith("sha256:") and got != ref:
            raise RegistryError("manifest verification failed for %s: its content is %s" % (ref, got))
        claimed = resp.headers.get("docker-content-digest")
        if claimed and claimed != got:
            raise RegistryError(
                "manifest verification failed for %s: the registry says %s but its content is %s"
                % (ref, claimed[:80], got)
            )
        mediatype = (resp.headers.get("content-type") or "").split(";")[0].strip()
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise RegistryError("registry sent an invalid manifest") from None
        if not isinstance(doc, dict):
            raise RegistryError("registry sent an invalid manifest: not a JSON object")
        return doc.get("mediaType") or mediatype, body, got, doc

    def raise_error(self, status, body, ref):
        """Raise NotFound or RegistryError for an error answer (status, body) about ref."""
        detail = error_detail(body)
        if status in (401, 403) or (status == 404 and "name unknown" in detail):
            raise NotFound(
                "pull access denied for %s, repository does not exist or may require "
                "'docker login'%s" % (self.repository, (": " + detail) if detail else "")
            )
        if status == 404:
            raise NotFound("manifest for %s:%s not found: %s" % (self.repository, ref, detail or "manifest unknown"))
        raise RegistryError("registry %s answered %d for %s %s" % (self.host, status, ref, detail))

    def blob(self, blob_digest, out, progress=None, limit=None):
        """Download a blob into the file object `out`, hashing it as it streams; returns its size.

        More than `limit` bytes (the descriptor's size) stops the download; content that does not
        hash to blob_digest is a RegistryError (the caller has used none of it yet).
        """
        want = digest.hex_of(blob_digest, "blob digest")
        resp = self.request("/v2/%s/blobs/%s" % (self.repository, blob_digest))
        if resp.status != 200:
            try:
                body = resp.read_limited(MAX_ERROR_BODY, "the registry's error answer")
            finally:
                resp.close()
            self.raise_error(resp.status, body, blob_digest)
        sha = hashlib.sha256()
        total = 0
        try:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if limit is not None and total > limit:
                    raise RegistryError("blob %s is larger than its descriptor says (%d bytes)" % (blob_digest, limit))
                sha.update(chunk)
                out.write(chunk)
                if progress:
                    progress(total)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError("error downloading %s: %s" % (blob_digest, exc)) from None
        finally:
            resp.close()
        if sha.hexdigest() != want:
            raise RegistryError(
                "blob %s failed verification: its content is sha256:%s" % (blob_digest, sha.hexdigest())
            )
        return total


def error_detail(body: bytes) -> str:
    """The first error of a registry's error answer as one short line ("unauthorized: ..."), or ""."""
    detail = ""
    try:
        errs = json.loads(body.decode("utf-8")).get("errors") or []
        detail = (
            ": ".join(filter(None, [errs[0].get("code", "").lower().replace("_", " "), errs[0].get("message", "")]))
            if errs
            else ""
        )
    except (ValueError, AttributeError, TypeError, IndexError, KeyError, UnicodeDecodeError):
        detail = ""
    return " ".join(str(detail).split())[:200]  # the registry's words, on one short line


def _pick_platform(index):
    arch = hostinfo.go_arch()
    descs = index.get("manifests") or []
    if not isinstance(descs, list):
        raise RegistryError("registry sent an invalid image index")
    for desc in descs:
        if not isinstance(desc, dict):
            raise RegistryError("registry sent an invalid image index")
        plat = desc.get("platform") or {}
        if isinstance(plat, dict) and plat.get("os") == "linux" and plat.get("architecture") == arch:
            return digest.check(desc.get("digest"), "manifest digest")
    raise NotFound("no matching manifest for linux/%s in the manifest list entries" % arch)


def check_policy(host: str, repo: str, policy: str, insecure_registries=(), action: str = "pull") -> None:
    """NotFound unless the engine's registry policy lets it reach `host` (checked before any connection).

    policy "local" (the default) only reaches registries on loopback and those given with
    --insecure-registry; "all" also docker.io and any other registry.
    """
    if policy != "all" and not is_insecure(host, insecure_registries):
        verb = {"pull": "pulls from", "push": "pushes to"}.get(action, "talks to")
        raise NotFound(
            "%s access denied for %s: this engine only %s local registries "
            "(start it with --opt registry-pull=all to reach %s)%s"
            % (action, repo, verb, host, "; load the image with `docker load` instead" if action == "pull" else "")
        )


def _mirror_registries(host, repo_path, insecure_registries, mirrors, certs_dirs=()):
    """Registries for the operator's --registry-mirror URLs (docker.io images only; no credentials sent)."""
    out = []
    if host != DOCKER_HUB:
        return out
    for url in mirrors or ():
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            reg = Registry(parts.netloc, repo_path, {}, insecure_registries, certs_dirs=certs_dirs)
            reg.scheme = parts.scheme  # the URL says how to reach it
            reg.http_fallback = False
            out.append(reg)
    return out


def pull(
    store,
    from_image,
    tag,
    emit,
    auth_header=None,
    insecure_registries=(),
    policy="local",
    mirrors=(),
    certs_dirs=(),
    max_concurrent=download.MAX_CONCURRENT,
):
    """Pull one image; emit(dict) gets moby's JSON progress messages. Returns the Image.

    policy "local" (the default) only reaches registries on loopback and those given
    with --insecure-registry; "all" also docker.io and any other registry. A docker.io image
    is asked of each --registry-mirror first (configured by the operator, so under any policy),
    then of docker.io itself if the policy allows.
    """
    ref_text = from_image
    if tag:
        ref_text += ("@" if tag.startswith("sha256:") else ":") + tag
    ref = reference.parse(ref_text, default_tag=True)
    host, repo_path = split_repository(ref.repo)
    candidates = _mirror_registries(host, repo_path, insecure_registries, mirrors, certs_dirs)
    if not candidates:
        check_policy(host, ref.repo, policy, insecure_registries)
    if ref.digest:
        digest.check(ref.digest, "manifest digest")
    wanted = ref.digest or ref.tag
    found = None
    for i, reg in enumerate(candidates):
        try:
            found = reg, reg.manifest(wanted)
            break
        except (RegistryError, NotFound) as exc:
            log.info("registry mirror %s: %s", reg.host, exc.message)
            if i == len(candidates) - 1:
                try:
                    check_policy(host, ref.repo, policy, insecure_registries)
                except NotFound:
                    raise exc from None  # no fallback allowed: the mirror's answer is the one to show
    if found is None:
        reg = Registry(host, repo_path, decode_auth(auth_header), insecure_registries, certs_dirs=certs_dirs)
        found = reg, reg.manifest(wanted)
    reg, (mediatype, raw, manifest_digest, doc) = found
    if mediatype in INDEX_TYPES or "manifests" in doc:
        mediatype, raw, manifest_digest, doc = reg.manifest(_pick_platform(doc))
    if doc.get("schemaVersion") == 1 or "config" not in doc:
        raise InvalidParameter("unsupported manifest format (schema 1): the image must be re-pushed")
    config_desc = _descriptor(doc["config"], "config")
    layers = [_descriptor(d, "layer") for d in _list(doc.get("layers"), "layers")]
    shown = ref.tag or ref.digest
    emit({"status": "Pulling from %s" % repo_path, "id": shown})

    cfg_buf = _Buffer()
    reg.blob(config_desc["digest"], cfg_buf, limit=config_desc["size"])
    config_raw = cfg_buf.getvalue()
    try:
        config = json.loads(config_raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise RegistryError("invalid image config in the registry") from None
    diff_ids = config_diff_ids(config)
    if len(diff_ids) != len(layers):
        raise RegistryError("manifest has %d layers but the config %d" % (len(layers), len(diff_ids)))
    image_id = digest.of_bytes(config_raw)
    up_to_date = store.exists(image_id)
    lock = threading.Lock()

    def emit_locked(msg):  # layer downloads report from several threads
        with lock:
            emit(msg)

    added = []
    try:
        added = download.pull_layers(store, reg, layers, diff_ids, emit_locked, max_concurrent)
        img = store.add_config(config_raw)
    except BaseException as exc:
        added = added or getattr(exc, "added", [])
        store.gc_layers(candidates=[diff_id for diff_id, _ in added])  # a failed pull leaves no layer behind
        raise
    known = distmeta.DistributionMetadata(store.root)
    for diff_id, desc in added:
        # the blob hashed to its digest and its content to the diff ID: a push can reuse it
        known.add(diff_id, desc["digest"], desc["size"], desc.get("mediaType"), "%s/%s" % (host, repo_path))
    if ref.tag:
        store.tag(img.id, reference.Reference(ref.repo, ref.tag))
    store.add_digest(img.id, ref.repo, manifest_digest)
    emit({"status": "Digest: %s" % manifest_digest})
    state = "Image is up to date for" if up_to_date else "Downloaded newer image for"
    emit({"status": "Status: %s %s" % (state, ref.tagged if ref.tag else "%s@%s" % (ref.repo, ref.digest))})
    return img


def _list(value, what):
    if value is None:
        return []
    if not isinstance(value, list):
        raise RegistryError("registry sent an invalid manifest: %s is not a list" % what)
    return value


def _descriptor(desc, what):
    """A manifest descriptor with a checked sha256 digest and a non-negative int size."""
    if not isinstance(desc, dict):
        raise RegistryError("registry sent an invalid manifest: a %s descriptor is not an object" % what)
    digest.check(desc.get("digest"), "%s digest" % what)
    size = desc.get("size")  # required by the OCI and Docker schema 2 specs; it bounds the download
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RegistryError("registry sent an invalid manifest: missing or bad %s size %.40r" % (what, size))
    if what == "config" and size > MAX_CONFIG:
        raise RegistryError("image config is too large (%d bytes, the limit is %d)" % (size, MAX_CONFIG))
    return desc


class _Buffer:
    def __init__(self, limit=MAX_CONFIG):
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
