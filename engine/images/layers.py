"""Content-addressed layer store: data-root/image/layers/<diffid-hex>/{diff/, meta.json, skeleton}.

A layer is extracted once into diff/ with whiteouts in overlayfs form, and is
shared by every image and container that uses it. Its diff ID is the sha256 of
the uncompressed tar. So that `docker save` can give back the exact same bytes
(the diff IDs in the image config must match), the tar's headers and padding are
kept in a small gzip'd "skeleton" and the file contents are read back from
diff/ (the tar-split idea). When a tar cannot be rebuilt that way (a path written
twice, sparse files), the uncompressed tar itself is kept as layer.tar instead.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from typing import BinaryIO, Callable

from dockyard.engine.atomicfile import atomic_write_json
from dockyard.engine.errors import InvalidParameter, NotFound, SystemFailure
from dockyard.engine.images import digest, tarsafe

log = logging.getLogger("dockyard.engine.images")

COPY_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Link names under image/l/ are made by the engine (uuid4 hex, upper case) and kept in the layer's
# meta.json, next to diff/ and out of reach of layer content; they are checked again when read.
_LINK_NAME = re.compile(r"\A[0-9A-Z]{20}\Z")
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")


def read_json(path, default=None):
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return default


def sniff_compression(head):
    """'gzip' | 'bzip2' | 'xz' | 'zstd' | None from the first bytes of a stream."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


class _Peek:
    """A read-only stream that lets the first bytes be looked at without consuming them."""

    def __init__(self, raw):
        self.raw = raw
        self.head = b""

    def peek(self, n):
        while len(self.head) < n:
            more = self.raw.read(n - len(self.head))
            if not more:
                break
            self.head += more
        return self.head[:n]

    def read(self, n=-1):
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.raw.read(n)

    def readable(self):
        return True


def decompressed(fileobj):
    """A file object yielding the uncompressed bytes of a maybe-compressed stream."""
    peek = _Peek(fileobj)
    kind = sniff_compression(peek.peek(6))
    if kind == "gzip":
        return gzip.GzipFile(fileobj=peek, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(peek, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(peek, mode="rb")
    if kind == "zstd":
        raise InvalidParameter("zstd-compressed layers are not supported by this engine")
    return peek


def short_id(hexid):
    return hexid[:12]


class Layer:
    """One extracted layer."""

    def __init__(self, store, hexid, meta):
        self.store = store
        self.hex = hexid
        self.meta = meta

    @property
    def diff_id(self):
        return "sha256:" + self.hex

    @property
    def dir(self):
        return os.path.join(self.store.root, self.hex)

    @property
    def diff_dir(self):
        return os.path.join(self.dir, "diff")

    @property
    def size(self):
        """Bytes of file content in the layer (what `docker images` adds up)."""
        return int(self.meta.get("size", 0))

    @property
    def tar_size(self):
        """Length of the uncompressed layer tar (the blob size in `docker save`)."""
        return int(self.meta.get("tar_size", 0))

    @property
    def link(self) -> str:
        """Short name under image/l/ pointing at diff/ (keeps overlay mount options short).

        Only a name of the engine's own form whose symlink points at this layer's diff/ is handed
        out: whatever the name, the overlay lowerdir it becomes is this layer and nothing else.
        """
        name = self.meta.get("link")
        if not isinstance(name, str) or not _LINK_NAME.match(name):
            raise SystemFailure("layer %s has a corrupt link name %r" % (self.diff_id, name))
        path = os.path.join(self.store.links, name)
        want = self.store.link_target(self.hex)
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            os.symlink(want, path)  # lost in a crash between rename and symlink: the name is ours
            return name
        except OSError as exc:
            raise SystemFailure("layer %s: cannot read its link %s: %s" % (self.diff_id, name, exc.strerror)) from None
        if target != want:
            raise SystemFailure("layer %s: link %s points at %r, not at the layer" % (self.diff_id, name, target))
        return name

    def open_tar(self):
        """A file object giving back the original uncompressed layer tar, byte for byte."""
        full = os.path.join(self.dir, "layer.tar")
        if os.path.exists(full):
            return open(full, "rb")
        return _Reassembler(os.path.join(self.dir, "skeleton.gz"), self.diff_dir)


class _Reassembler:
    """Reads skeleton records and splices file contents from diff/ back in."""

    def __init__(self, skeleton_path, diff_dir):
        self._skel = gzip.open(skeleton_path, "rb")
        self._scope = tarsafe.Scope(diff_dir)
        self._buf = b""
        self._file = None
        self._file_left = 0

    def _next_record(self):
        kind = self._skel.read(1)
        if not kind:
            return False
        if kind == b"R":
            (n,) = struct.unpack(">Q", self._skel.read(8))
            self._buf = self._skel.read(n)
        elif kind == b"F":
            (size, plen) = struct.unpack(">QH", self._skel.read(10))
            rel = self._skel.read(plen).decode("utf-8", "surrogateescape")
            pfd, name, _ = self._scope.resolve(rel, follow_final=False)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            finally:
                os.close(pfd)
            self._file = os.fdopen(fd, "rb")
            self._file_left = size
        else:
            raise ValueError("corrupt layer skeleton")
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            n = 1 << 62
        out = []
        while n > 0:
            if self._buf:
                piece, self._buf = self._buf[:n], self._buf[n:]
                out.append(piece)
                n -= len(piece)
                continue
            if self._file is not None:
                if self._file_left > 0:
                    piece = self._file.read(min(n, self._file_left, COPY_CHUNK))
                    if not piece:
                        raise IOError("layer content changed on disk (file shorter than recorded)")
                    self._file_left -= len(piece)
                    out.append(piece)
                    n -= len(piece)
                    continue
                self._file.close()
                self._file = None
                continue
            if not self._next_record():
                break
        return b"".join(out)

    def close(self):
        if self._file is not None:
            self._file.close()
        self._skel.close()
        self._scope.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SkeletonPlan:
    """Collects, while extracting, where file contents sit in the tar and whether splicing is safe."""

    def __init__(self):
        self.refs = []  # (offset_data, size, relpath)
        self.paths = set()
        self.prefixes = set()
        self.ok = True

    def on_member(self, member, parts, what):
        key = tuple(parts)
        if what == "whiteout":
            base = parts[-1]
            if base.startswith(tarsafe.WHITEOUT_PREFIX + tarsafe.WHITEOUT_PREFIX):
                return
            key = tuple(parts[:-1]) + (base[len(tarsafe.WHITEOUT_PREFIX) :],)
            if member.size:
                self.ok = False
        if key in self.paths or (key in self.prefixes and not member.isdir()):
            self.ok = False  # a later entry replaced earlier content: cannot splice
        self.paths.add(key)
        for i in range(1, len(key)):
            self.prefixes.add(key[:i])
        if member.issparse():
            self.ok = False
        if what == "entry" and member.isreg() and member.size > 0:
            self.refs.append((member.offset_data, member.size, "/".join(parts)))


def _write_skeleton(tar_path, refs, out_path):
    """Everything of the tar except the referenced content ranges, as R/F records."""
    with open(tar_path, "rb") as src, gzip.open(out_path, "wb", compresslevel=6) as out:
        pos = 0
        for offset, size, rel in refs:
            if offset < pos:
                raise ValueError("overlapping content ranges")
            gap = offset - pos
            out.write(b"R" + struct.pack(">Q", gap))
            src.seek(pos)
            left = gap
            while left:
                chunk = src.read(min(left, COPY_CHUNK))
                if not chunk:
                    raise ValueError("tar shorter than its members")
                out.write(chunk)
                left -= len(chunk)
            raw = rel.encode("utf-8", "surrogateescape")
            out.write(b"F" + struct.pack(">QH", size, len(raw)) + raw)
            pos = offset + size
        src.seek(pos)
        rest = src.read()
        out.write(b"R" + struct.pack(">Q", len(rest)) + rest)


class LayerStore:
    """data-root/image/layers: ingest tars, look layers up, remove unreferenced ones."""

    def __init__(self, image_root: str, shift: Callable[[int, int], tuple[int, int]] | None = None) -> None:
        """shift: with user namespace remapping, (uid, gid) -> host ids for every extracted entry's owner."""
        self.shift = shift
        self.root = os.path.join(image_root, "layers")
        self.links = os.path.join(image_root, "l")
        self.tmp = os.path.join(image_root, "tmp")
        for d in (self.root, self.links, self.tmp):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._clean_tmp()

    def _clean_tmp(self):
        for name in os.listdir(self.tmp):
            shutil.rmtree(os.path.join(self.tmp, name), ignore_errors=True)
        for name in os.listdir(self.root):
            if name.startswith("."):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    @staticmethod
    def link_target(hexid: str) -> str:
        """What image/l/<link> of layer hexid points at."""
        return "../layers/%s/diff" % hexid

    def exists(self, diff_id: str) -> bool:
        """True if the engine committed this layer (layers/<hex>/meta.json, written only after verification).

        diff_id must be a well-formed sha256 digest (InvalidParameter otherwise): the hex is a path
        component, and only layers/<64 hex>/meta.json is out of reach of every layer's content.
        """
        hexid = digest.hex_of(diff_id, "diff ID")
        return os.path.exists(os.path.join(self.root, hexid, "meta.json"))

    def get(self, diff_id: str) -> Layer:
        hexid = digest.hex_of(diff_id, "diff ID")
        meta = read_json(os.path.join(self.root, hexid, "meta.json"))
        if meta is None:
            raise NotFound("layer %s does not exist" % diff_id)
        if not isinstance(meta, dict) or meta.get("diff_id") != diff_id:
            raise SystemFailure("layer %s has corrupt metadata" % diff_id)
        return Layer(self, hexid, meta)

    def list_ids(self) -> list[str]:
        out = []
        for name in os.listdir(self.root):
            if _HEX64.match(name) and os.path.exists(os.path.join(self.root, name, "meta.json")):
                out.append("sha256:" + name)
        return out

    def tempdir(self) -> str:
        return tempfile.mkdtemp(prefix="w-", dir=self.tmp)

    def ingest(
        self, fileobj: BinaryIO, expected: str | None = None, progress: Callable[[int], None] | None = None
    ) -> Layer:
        """Store a (maybe compressed) layer tar; returns its Layer (existing one if known).

        expected: the diff ID the image config promises; a mismatch is a 400. A layer that is
        already stored is not trusted to match: the stream is hashed all the same (and not stored).
        progress(done_bytes) is called while the uncompressed tar is copied.
        """
        if expected is not None:
            digest.check(expected, "diff ID")
            if self.exists(expected):
                return self._verify_existing(fileobj, expected, progress)
        work = self.tempdir()
        try:
            tar_path = os.path.join(work, "layer.tar")
            sha = hashlib.sha256()
            total = 0
            src = decompressed(fileobj)
            try:
                with open(tar_path, "wb") as out:
                    while True:
                        chunk = src.read(COPY_CHUNK)
                        if not chunk:
                            break
                        sha.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
                        if progress:
                            progress(total)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                raise InvalidParameter("invalid layer data: %s" % exc) from None
            diff_id = "sha256:" + sha.hexdigest()
            if expected and expected != diff_id:
                raise InvalidParameter("invalid diffID for layer: expected %s, got %s" % (expected, diff_id))
            if self.exists(diff_id):
                return self.get(diff_id)
            return self._extract(work, tar_path, diff_id, total)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _verify_existing(self, fileobj, expected, progress):
        """Hash a layer stream that is already stored: the same 400 as ingest on a mismatch, nothing written."""
        sha = hashlib.sha256()
        total = 0
        src = decompressed(fileobj)
        try:
            while True:
                chunk = src.read(COPY_CHUNK)
                if not chunk:
                    break
                sha.update(chunk)
                total += len(chunk)
                if progress:
                    progress(total)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise InvalidParameter("invalid layer data: %s" % exc) from None
        got = "sha256:" + sha.hexdigest()
        if got != expected:
            raise InvalidParameter("invalid diffID for layer: expected %s, got %s" % (expected, got))
        return self.get(expected)

    def _extract(self, work, tar_path, diff_id, tar_size):
        hexid = digest.hex_of(diff_id, "diff ID")
        stage = os.path.join(self.root, ".%s-%s" % (hexid[:16], uuid.uuid4().hex[:8]))
        os.mkdir(stage, 0o700)
        try:
            diff = os.path.join(stage, "diff")
            os.mkdir(diff, 0o755)
            if self.shift is not None:
                os.chown(diff, *self.shift(0, 0))
            plan = _SkeletonPlan()
            with open(tar_path, "rb") as fh:
                with tarfile.open(fileobj=fh, mode="r:") as tar:
                    result = tarsafe.safe_extract(
                        tar, diff, whiteouts="overlay", allow_devices=True, on_member=plan.on_member, shift=self.shift
                    )
            if plan.ok:
                _write_skeleton(tar_path, plan.refs, os.path.join(stage, "skeleton.gz"))
            else:
                shutil.move(tar_path, os.path.join(stage, "layer.tar"))
            link = uuid.uuid4().hex[:20].upper()
            meta = {"diff_id": diff_id, "size": result.size, "tar_size": tar_size, "link": link, "created": time.time()}
            atomic_write_json(os.path.join(stage, "meta.json"), meta, durable=True)
            with self._lock:
                final = os.path.join(self.root, hexid)
                if os.path.exists(os.path.join(final, "meta.json")):
                    shutil.rmtree(stage, ignore_errors=True)  # a concurrent load won the race
                    return self.get(diff_id)
                shutil.rmtree(final, ignore_errors=True)
                os.symlink(self.link_target(hexid), os.path.join(self.links, link))
                os.rename(stage, final)
            return Layer(self, hexid, meta)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def remove(self, diff_id: str) -> bool:
        """Delete a layer (the caller checked that nothing references it)."""
        hexid = digest.hex_of(diff_id, "diff ID")
        final = os.path.join(self.root, hexid)
        meta = read_json(os.path.join(final, "meta.json")) or {}
        link = meta.get("link") if isinstance(meta, dict) else None
        with self._lock:
            trash = os.path.join(self.root, ".rm-%s-%s" % (hexid[:16], uuid.uuid4().hex[:8]))
            try:
                os.rename(final, trash)  # atomic: the layer is gone at once, deletion can be slow
            except FileNotFoundError:
                return False
            # Only a link of the engine's own form that points at this very layer is removed.
            if isinstance(link, str) and _LINK_NAME.match(link):
                path = os.path.join(self.links, link)
                try:
                    if os.readlink(path) == self.link_target(hexid):
                        os.unlink(path)
                except OSError:
                    pass
        shutil.rmtree(trash, ignore_errors=True)
        return True
