"""Image archives: `docker load` (docker-archive and OCI layout), `docker save`, `docker import`.

Load reads an archive that was first streamed to disk (request bodies come
chunked), finds its images through manifest.json (docker save, every version)
or index.json (OCI layout) and checks all of it before anything is stored: every
digest is a well-formed sha256 digest, every path named by the archive's own
JSON stays inside the archive, every content-addressed blob (index, manifest,
config, layer) matches its digest, and every layer matches its diff ID, also a
layer the engine already has. Layers stored by a load that then fails are
removed again; configs and tags are written only once every layer is in.
Save writes the Docker 25+ layout: OCI blobs, index.json and oci-layout plus
manifest.json and repositories, so docker, skopeo and this engine can all read
it back. Import (a rootfs tarball into a one-layer image) is importer.py's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import posixpath
import tarfile
import time

from dockyard.engine import hostinfo
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images import digest, reference
from dockyard.engine.images.layers import decompressed, sniff_compression
from dockyard.engine.images.store import config_diff_ids

log = logging.getLogger("dockyard.engine.images")

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ANNOTATION_NAME = "io.containerd.image.name"
ANNOTATION_REF = "org.opencontainers.image.ref.name"


class _Archive:
    """Random access to the members of an archive on disk (outer gzip/bzip2/xz handled by tarfile)."""

    def __init__(self, path):
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {}
            for m in self.tar.getmembers():
                self.members[posixpath.normpath(m.name.lstrip("/"))] = m
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidParameter("invalid archive: %s" % exc) from None

    def has(self, name):
        return posixpath.normpath(name.lstrip("/")) in self.members

    def size(self, name):
        return self.members[posixpath.normpath(name.lstrip("/"))].size

    def open(self, name):
        member = self.members.get(posixpath.normpath(name.lstrip("/")))
        if member is None:
            raise InvalidParameter("invalid archive: %s is missing" % name)
        try:
            fh = self.tar.extractfile(member)
        except (tarfile.TarError, KeyError) as exc:
            raise InvalidParameter("invalid archive: cannot read %s: %s" % (name, exc)) from None
        if fh is None:
            raise InvalidParameter("invalid archive: %s is not a file" % name)
        return fh

    def read(self, name, limit=64 << 20):
        data = self.open(name).read(limit + 1)
        if len(data) > limit:
            raise InvalidParameter("invalid archive: %s is too large" % name)
        return data

    def json(self, name, data=None):
        try:
            return json.loads((self.read(name) if data is None else data).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidParameter("invalid archive: %s is not valid JSON: %s" % (name, exc)) from None

    def blob(self, name, want):
        """Bytes of member `name`, checked against digest `want` when the path is content-addressed."""
        data = self.read(name)
        if want is not None and digest.of_bytes(data) != want:
            raise InvalidParameter(
                "invalid archive: %s does not match its digest (content is %s)" % (name, digest.of_bytes(data))
            )
        return data

    def blob_json(self, desc_digest, what):
        """The JSON document stored as blobs/sha256/<hex>, checked against its digest."""
        path = _blob_path(desc_digest, what)
        return self.json(path, self.blob(path, desc_digest))

    def close(self):
        self.tar.close()


def _blob_path(value, what="digest"):
    return "blobs/sha256/" + digest.hex_of(value, what)


def _member_path(name, what):
    """A path named in manifest.json: relative, no `..`, inside the archive; blobs/ paths are digests."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvalidParameter("invalid archive: %s %r is not a path" % (what, name))
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise InvalidParameter("invalid archive: %s %r points outside the archive" % (what, name))
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise InvalidParameter("invalid archive: %s %r is not a path" % (what, name))
    if clean[0] == "blobs":
        if len(clean) != 3 or clean[1] != "sha256":
            raise InvalidParameter("invalid archive: %s %r is not blobs/sha256/<digest>" % (what, name))
        digest.check("sha256:" + clean[2], what)
    return "/".join(clean)


def _addressed(path):
    """The digest a content-addressed member path promises (blobs/sha256/<hex>), else None."""
    if path.startswith("blobs/sha256/"):
        return "sha256:" + path[len("blobs/sha256/") :]
    return None


def _platform_ok(desc):
    plat = desc.get("platform")
    if not plat:
        return True
    if not isinstance(plat, dict):
        raise InvalidParameter("invalid archive: a descriptor's platform is not an object")
    return plat.get("os", "linux") == "linux" and plat.get("architecture") in (None, hostinfo.go_arch())


def _oci_images(arc):
    """[(config_path, tags, layer_paths)] from index.json, following nested indexes."""
    out = []
    depth = [0]

    def walk(index, inherited_names):
        if not isinstance(index, dict) or not isinstance(index.get("manifests") or [], list):
            raise InvalidParameter("invalid archive: an image index is not an object with a manifests list")
        depth[0] += 1
        if depth[0] > 8:
            raise InvalidParameter("invalid archive: image indexes nested too deep")
        for desc in index.get("manifests") or []:
            if not isinstance(desc, dict):
                raise InvalidParameter("invalid archive: a manifest descriptor is not an object")
            mt = desc.get("mediaType", "")
            ann = desc.get("annotations") or {}
            if not isinstance(ann, dict):
                raise InvalidParameter("invalid archive: a descriptor's annotations are not an object")
            names = list(inherited_names)
            full = ann.get(ANNOTATION_NAME)
            ref = ann.get(ANNOTATION_REF, "")
            if not isinstance(full, (str, type(None))) or not isinstance(ref, str):
                raise InvalidParameter("invalid archive: an image name annotation is not a string")
            if full:
                names.append(full)
            elif ref and ("/" in ref or ":" in ref):
                names.append(ref)  # a full reference; a bare tag has no repository to go with it
            if mt in (MT_OCI_INDEX, MT_DOCKER_LIST):
                if _platform_ok(desc):
                    walk(arc.blob_json(desc.get("digest"), "index digest"), names)
            elif mt in (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, ""):
                if not _platform_ok(desc):
                    continue
                manifest = arc.blob_json(desc.get("digest"), "manifest digest")
                if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
                    continue
                descs = manifest.get("layers") or []
                if not isinstance(descs, list) or not all(isinstance(l, dict) for l in descs):
                    raise InvalidParameter("invalid archive: manifest layers are not a list of descriptors")
                layers = [_blob_path(l.get("digest"), "layer digest") for l in descs]
                out.append((_blob_path(manifest["config"].get("digest"), "config digest"), names, layers))
        depth[0] -= 1

    walk(arc.json("index.json"), [])
    # One image may be listed once per tag: merge by config.
    merged = {}
    for cfg, names, layers in out:
        if cfg in merged:
            merged[cfg][1].extend(n for n in names if n not in merged[cfg][1])
        else:
            merged[cfg] = (cfg, list(names), layers)
    return list(merged.values())


def _docker_images(arc):
    manifest = arc.json("manifest.json")
    if not isinstance(manifest, list):
        raise InvalidParameter("invalid archive: manifest.json is not a list")
    out = []
    for entry in manifest:
        if not isinstance(entry, dict) or "Config" not in entry:
            raise InvalidParameter("invalid archive: bad manifest.json entry")
        tags = entry.get("RepoTags") or []
        layers = entry.get("Layers") or []
        if not isinstance(tags, list) or not isinstance(layers, list):
            raise InvalidParameter("invalid archive: bad manifest.json entry")
        out.append(
            (
                _member_path(entry["Config"], "config path"),
                list(tags),
                [_member_path(layer, "layer path") for layer in layers],
            )
        )
    return out


def _progress_bar(current, total, width=50):
    if total <= 0:
        return ""
    filled = int(width * current / total)
    arrow = ">" if filled < width else ""
    return "[%s%s%s] %s/%s" % ("=" * filled, arrow, " " * (width - filled - len(arrow)), _human(current), _human(total))


def _human(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return ("%.4g%s" % (n, unit)) if unit != "B" else "%dB" % n
        n /= 1000.0
    return str(n)


def _inflate(path):
    """Compressed archives are inflated to a temp file first: members are read out of order, and
    seeking backwards in a gzip stream means decompressing it again from the start."""
    with open(path, "rb") as fh:
        kind = sniff_compression(fh.read(6))
    if kind is None:
        return path, None
    if kind == "zstd":
        raise InvalidParameter("zstd-compressed archives are not supported by this engine")
    out = path + ".tar"
    try:
        with open(path, "rb") as src, open(out, "wb") as dst:
            stream = decompressed(src)
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        os.unlink(out)
        raise InvalidParameter("invalid archive: %s" % exc) from None
    return out, out


def load(store, path, emit, quiet=True):
    """Load every image of the archive at `path`; emit(dict) gets the JSON stream messages."""
    path, temp = _inflate(path)
    try:
        return _load(store, path, emit, quiet)
    finally:
        if temp:
            os.unlink(temp)


class _PlannedImage:
    """One image of an archive, checked and ready to store: config bytes, diff IDs, layer members, tags."""

    def __init__(self, raw_config, diff_ids, layer_paths, tags):
        self.raw_config = raw_config
        self.diff_ids = diff_ids
        self.layer_paths = layer_paths
        self.tags = tags


def _plan(arc):
    """Read and check everything in the archive that is not layer content; nothing is written."""
    if arc.has("manifest.json"):
        images = _docker_images(arc)
    elif arc.has("index.json"):
        images = _oci_images(arc)
    elif arc.has("repositories"):
        raise InvalidParameter("invalid archive: legacy (pre-1.10) image format without manifest.json is not supported")
    else:
        raise InvalidParameter(
            "invalid archive: no manifest.json or index.json found (is this a `docker save` tarball?)"
        )
    if not images:
        raise InvalidParameter("invalid archive: no images in it")
    planned = []
    for cfg_path, tags, layer_paths in images:
        raw = arc.blob(cfg_path, _addressed(cfg_path))
        try:
            config = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidParameter("invalid image config %s: %s" % (cfg_path, exc)) from None
        diff_ids = config_diff_ids(config)
        if len(diff_ids) != len(layer_paths):
            raise InvalidParameter(
                "invalid manifest, layers length mismatch: expected %d, got %d" % (len(diff_ids), len(layer_paths))
            )
        refs = []
        for tag in tags:
            if not isinstance(tag, str):
                raise InvalidParameter("invalid archive: a RepoTags entry is not a string")
            parsed = reference.parse(tag, default_tag=True)
            if parsed.digest and not parsed.tag:
                raise InvalidParameter("invalid archive: %s is not a tag" % tag)
            reference.check_repo_name(parsed.repo)
            refs.append(parsed)
        for layer_path in layer_paths:
            if not arc.has(layer_path):
                raise InvalidParameter("invalid archive: %s is missing" % layer_path)
        planned.append(_PlannedImage(raw, diff_ids, layer_paths, refs))
    return planned


def _load(store, path, emit, quiet):
    arc = _Archive(path)
    try:
        planned = _plan(arc)
        added = _load_layers(store, arc, planned, emit, quiet)
        try:
            return [_store_image(store, item, emit) for item in planned]
        except BaseException:
            store.gc_layers(candidates=added)
            raise
    finally:
        arc.close()


def _load_layers(store, arc, planned, emit, quiet):
    """Ingest (or verify, when already stored) every layer; -> diff IDs this load added.

    Layers added before a failure are removed again (unless an image or container uses them by then).
    """
    added = []
    done = set()
    try:
        for item in planned:
            for diff_id, layer_path in zip(item.diff_ids, item.layer_paths):
                if (diff_id, layer_path) in done:
                    continue
                if not store.layers.exists(diff_id):
                    added.append(diff_id)  # before: a blob digest is checked after the layer is in
                _load_layer(store, arc, diff_id, layer_path, emit, quiet)
                done.add((diff_id, layer_path))
    except BaseException:
        store.gc_layers(candidates=added)
        raise
    return added


def _load_layer(store, arc, diff_id, layer_path, emit, quiet):
    total = arc.size(layer_path)
    sid = diff_id.split(":", 1)[-1][:12]
    report = None
    if not quiet:
        last = [0.0]

        def report(done, sid=sid, total=total, last=last):
            now = time.monotonic()
            if now - last[0] < 0.1:
                return
            last[0] = now
            emit(
                {
                    "status": "Loading layer",
                    "progressDetail": {"current": min(done, total), "total": total},
                    "progress": _progress_bar(min(done, total), total),
                    "id": sid,
                }
            )

    reader = _HashingReader(arc.open(layer_path))
    try:
        store.layers.ingest(reader, expected=diff_id, progress=report)
        while reader.read(1 << 20):  # a compressed blob may end after the data its decoder asked for
            pass
    except InvalidParameter as exc:
        raise InvalidParameter("error loading layer %s: %s" % (layer_path, exc.message)) from None
    want = _addressed(layer_path)
    got = "sha256:" + reader.sha.hexdigest()
    if want is not None and got != want:
        raise InvalidParameter("invalid archive: %s does not match its digest (content is %s)" % (layer_path, got))
    if not quiet:
        emit(
            {
                "status": "Loading layer",
                "progressDetail": {"current": total, "total": total},
                "progress": _progress_bar(total, total),
                "id": sid,
            }
        )


def _store_image(store, item, emit):
    img = store.add_config(item.raw_config)
    names = []
    for parsed in item.tags:
        old = store.tag(img.id, parsed)
        if old and store.exists(old):
            emit(
                {
                    "stream": "The image %s already exists, renaming the old one with ID %s to "
                    "empty string\n" % (parsed.tagged, old)
                }
            )
        names.append(parsed.tagged)
    if names:
        for name in names:
            emit({"stream": "Loaded image: %s\n" % name})
    else:
        emit({"stream": "Loaded image ID: %s\n" % img.id})
    return img


# -- save ----------------------------------------------------------------------------------


def resolve_save_names(store, names):
    """[(Image, [tags])] in request order; NotFound for any missing name (before streaming)."""
    order, tags = [], {}

    def add(img, tag=None):
        if img.id not in tags:
            order.append(img)
            tags[img.id] = []
        if tag and tag not in tags[img.id]:
            tags[img.id].append(tag)

    for name in names:
        if not name:
            continue
        parsed = None
        try:
            parsed = reference.parse(name)
        except InvalidParameter:
            pass
        if parsed is not None and not parsed.tag and not parsed.digest:
            repo_tags = sorted(t for t in store.all_tags() if t.rsplit(":", 1)[0] == parsed.repo)
            if repo_tags:
                for t in repo_tags:
                    add(store.get(t), t)
                continue
        img = store.get(name)
        if parsed is not None and parsed.tag and store.all_tags().get(parsed.tagged) == img.id:
            add(img, parsed.tagged)
        else:
            add(img)
    return [(img, tags[img.id]) for img in order]


class _HashingReader:
    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n=-1):
        data = self.raw.read(n)
        self.sha.update(data)
        return data


def _add_bytes(tar, name, data, mtime):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar, name, mtime):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = mtime
    tar.addfile(info)


def _json_bytes(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def save(store, selection, out):
    """Write the Docker 25+ `docker save` tar for [(Image, [tags])] to out (has .write)."""
    mtime = 0
    tar = tarfile.open(fileobj=out, mode="w|", bufsize=1 << 20, format=tarfile.PAX_FORMAT)
    try:
        _add_dir(tar, "blobs", mtime)
        _add_dir(tar, "blobs/sha256", mtime)
        written = set()
        index, manifest_json, repositories = [], [], {}
        for img, tags in selection:
            layer_descs = []
            for layer in img.layers():
                diff_id = layer.diff_id
                if diff_id not in written:
                    info = tarfile.TarInfo(_blob_path(diff_id))
                    info.size = layer.tar_size
                    info.mode = 0o644
                    info.mtime = mtime
                    src = layer.open_tar()
                    try:
                        reader = _HashingReader(src)
                        tar.addfile(info, reader)
                    finally:
                        src.close()
                    if "sha256:" + reader.sha.hexdigest() != diff_id:
                        log.error("layer %s no longer matches its diff ID on disk", diff_id)
                    written.add(diff_id)
                layer_descs.append({"mediaType": MT_OCI_LAYER, "size": layer.tar_size, "digest": diff_id})
            if img.id not in written:
                _add_bytes(tar, _blob_path(img.id), img.raw_config, mtime)
                written.add(img.id)
            manifest = _json_bytes(
                {
                    "schemaVersion": 2,
                    "mediaType": MT_OCI_MANIFEST,
                    "config": {"mediaType": MT_OCI_CONFIG, "digest": img.id, "size": len(img.raw_config)},
                    "layers": layer_descs,
                }
            )
            mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            if mdigest not in written:
                _add_bytes(tar, _blob_path(mdigest), manifest, mtime)
                written.add(mdigest)
            base = {"mediaType": MT_OCI_MANIFEST, "digest": mdigest, "size": len(manifest)}
            if tags:
                for tag in tags:
                    parsed = reference.parse(tag, default_tag=True)
                    desc = dict(base)
                    desc["annotations"] = {
                        ANNOTATION_NAME: "%s:%s" % (parsed.full_name(), parsed.tag),
                        ANNOTATION_REF: parsed.tag,
                    }
                    index.append(desc)
                    repositories.setdefault(parsed.repo, {})[parsed.tag] = img.hex
            else:
                index.append(base)
            manifest_json.append(
                {
                    "Config": _blob_path(img.id),
                    "RepoTags": list(tags) or None,
                    "Layers": [_blob_path(d["digest"]) for d in layer_descs],
                }
            )
        _add_bytes(
            tar, "index.json", _json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index}), mtime
        )
        _add_bytes(tar, "manifest.json", _json_bytes(manifest_json), mtime)
        _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}), mtime)
        if repositories:
            _add_bytes(tar, "repositories", _json_bytes(repositories), mtime)
    finally:
        tar.close()
