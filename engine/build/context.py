"""The build context: the request body (a tar, maybe compressed) spooled to disk as a plain tar as it
arrives (a compressed one is undone first), never held in memory.

A simple context (contextindex.py) is indexed while it arrives and extracted only when a step needs its
files: a fully cached rebuild reads the Dockerfile, .dockerignore and the COPY/ADD checksums from the tar
and writes no file. Any other context is extracted at once, as it always was.

Nothing in the context may lead outside it: tarsafe refuses absolute member names, `..`, hard links
out of it and relative symlinks that climb above it; here absolute symlinks are refused as well
(in a context they could only be meant to name a path of the host). Paths named by the Dockerfile
(the `dockerfile` parameter, COPY/ADD sources) are resolved inside the extracted tree only.
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import io
import lzma
import os
import posixpath
import shutil
import stat
import tempfile
from typing import BinaryIO

from dockyard.engine.build import contextindex, dockerignore
from dockyard.engine.errors import InvalidParameter, NotFound
from dockyard.engine.images import tarsafe

COPY_CHUNK = 1 << 20
STREAM_CHUNK = 256 << 10  # a plain context is read from the request in pieces this big
WILDCARDS = "*?["


class ContextError(InvalidParameter):
    """The build context or a path in it is not acceptable."""


def _refuse_absolute_links(member, parts, what):
    if member.issym() and member.linkname.startswith("/"):
        raise tarsafe.UnsafeArchive(
            "invalid build context: symlink %r points to the absolute path %r" % (member.name, member.linkname)
        )


COMPRESSED_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: what _plain_tar undoes
COMPRESSED_MAGIC_LEN = 6


class _EndedTar:
    """A plain tar request body read as a stream, ended properly (see _plain_tar): at its end, zeros up to
    the next 512-byte block and the two end-of-archive blocks. Counts the bytes received in `total`.

    tarfile's stream reads 10 KiB at a time: those are served from STREAM_CHUNK reads of the body.
    """

    def __init__(self, head: bytes, body: BinaryIO, spool: BinaryIO) -> None:
        self.buf, self.pos = head, 0
        self.body = body
        self.spool = spool  # every byte served is also written here
        spool.write(head)
        self.total = len(head)
        self.ended = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = COPY_CHUNK
        if self.pos >= len(self.buf):
            if self.ended:
                return b""
            data = self.body.read(STREAM_CHUNK)
            if data:
                self.total += len(data)
            else:
                self.ended = True
                data = b"\0" * ((-self.total) % 512 + 1024)
            self.spool.write(data)
            self.buf, self.pos = data, 0
        out = self.buf[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def _plain_tar(raw: str, out_path: str) -> None:
    """The context as an uncompressed tar (gzip, bzip2 and xz are undone), ended properly.

    The CLI's `-f -` context ends with its rewritten .dockerignore, unpadded and without the
    end-of-archive blocks (Go's reader takes that): the blocks are added for Python's tarfile.
    """
    with open(raw, "rb") as fh:
        head = fh.read(6)
    src: io.BufferedIOBase
    if head.startswith(b"\x1f\x8b"):
        src = gzip.open(raw, "rb")
    elif head.startswith(b"BZh"):
        src = bz2.open(raw, "rb")
    elif head.startswith(b"\xfd7zXZ"):
        src = lzma.open(raw, "rb")
    else:
        src = open(raw, "rb")
    total = 0
    with open(out_path, "wb") as out:
        try:
            with src:
                while True:
                    chunk = src.read(COPY_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    total += len(chunk)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise ContextError("invalid build context: cannot decompress it: %s" % exc) from None
        out.write(b"\0" * ((-total) % 512 + 1024))


def clean_relative(path: str, what: str = "path") -> str:
    """A context-relative path from the Dockerfile or the query ('' is the root); `..` out of it is refused."""
    norm = posixpath.normpath(path.lstrip("/") or ".")
    if norm == ".." or norm.startswith("../"):
        raise ContextError("Forbidden path outside the build context: %s (%s)" % (path, what))
    return "" if norm == "." else norm


class BuildContext:
    """A context in its own temp dir under the builder's work dir; close() removes it.

    `root` is the extracted tree (extracted on first use when the context is indexed)."""

    def __init__(self, workdir: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="ctx-", dir=workdir)
        self._root = os.path.join(self.dir, "context")
        self.spool = os.path.join(self.dir, "context.tar")
        self.index: contextindex.ContextIndex | None = None
        self.ignore: list[dockerignore.Pattern] = []

    @property
    def root(self) -> str:
        if self.index is not None:
            self.index = None
            with open(self.spool, "rb") as fh:
                self._extract(fh)
            os.unlink(self.spool)
            if self.ignore:
                dockerignore.apply(self._root, self.ignore)
        return self._root

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, body: BinaryIO) -> int:
        """Extract the body (never held in memory); -> bytes received.

        A plain tar (what the CLI sends unless --compress) is spooled and indexed as it arrives, while the
        client still sends; a compressed one is spooled to disk and undone first.
        """
        head = body.read(COMPRESSED_MAGIC_LEN)
        while head and len(head) < COMPRESSED_MAGIC_LEN:
            more = body.read(COMPRESSED_MAGIC_LEN - len(head))
            if not more:
                break
            head += more
        if not head:
            raise ContextError("the build context is empty: send the context as a tar archive")
        if not head.startswith(COMPRESSED_MAGICS):
            with open(self.spool, "wb") as out:
                stream = _EndedTar(head, body, out)
                index = contextindex.scan(stream, self.spool)
                while stream.read(COPY_CHUNK):  # the rest (all of it when the scan gave up): spooled too
                    pass
            self._index_or_extract(index)
            return stream.total
        raw = os.path.join(self.dir, "context.raw")
        total = len(head)
        with open(raw, "wb") as out:
            out.write(head)
            while True:
                chunk = body.read(COPY_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                total += len(chunk)
        if total == 0:
            raise ContextError("the build context is empty: send the context as a tar archive")
        try:
            _plain_tar(raw, self.spool)
        finally:
            os.unlink(raw)
        with open(self.spool, "rb") as fh:
            index = contextindex.scan(fh, self.spool)
        self._index_or_extract(index)
        return total

    def _index_or_extract(self, index: contextindex.ContextIndex | None) -> None:
        """Keep a simple context as its indexed tar; extract any other now (tarsafe's checks and errors)."""
        if index is not None:
            self.index = index
            return
        try:
            with open(self.spool, "rb") as fh:
                self._extract(fh)
        finally:
            os.unlink(self.spool)

    def _extract(self, stream) -> None:
        os.mkdir(self._root, 0o755)
        try:
            tarsafe.safe_extract(stream, self._root, whiteouts="keep", on_member=_refuse_absolute_links)
        except tarsafe.UnsafeArchive as exc:
            raise ContextError("invalid build context: %s" % exc.message.replace("invalid build context: ", ""))

    # -- reading -----------------------------------------------------------------------------
    def host_path(self, rel: str, follow: bool = True) -> str:
        """Host path of a context path, symlinks resolved inside the context."""
        with tarsafe.Scope(self.root) as scope:
            fd, name, real = scope.resolve(rel, follow_final=follow)
            os.close(fd)
        inner = "/".join(real + ([name] if name else []))
        path = os.path.join(self.root, inner) if inner else self.root
        if os.path.commonpath([os.path.realpath(path), os.path.realpath(self.root)]) != os.path.realpath(self.root):
            raise ContextError("Forbidden path outside the build context: %s" % rel)
        return path

    def read_file(self, rel: str, limit: int) -> bytes | None:
        """A small file of the context (Dockerfile, .dockerignore); None if missing."""
        if self.index is not None:
            return self._read_indexed(clean_relative(rel, "dockerfile"), limit)
        try:
            path = self.host_path(clean_relative(rel, "dockerfile"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise ContextError("cannot read %s from the build context: %s" % (rel, exc.strerror)) from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ContextError("%s in the build context is not a regular file" % rel)
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise ContextError("%s in the build context is larger than %d bytes" % (rel, limit))
        return data

    def _read_indexed(self, rel: str, limit: int) -> bytes | None:
        assert self.index is not None
        entry = self.index.lookup(rel)
        if entry is None:
            return None
        if entry.is_dir:
            raise ContextError("%s in the build context is not a regular file" % rel)
        data = self.index.read(entry, limit)
        if len(data) > limit:
            raise ContextError("%s in the build context is larger than %d bytes" % (rel, limit))
        return data

    def dockerfile(self, name: str, limit: int) -> bytes:
        name = name or "Dockerfile"
        data = self.read_file(name, limit)
        if data is None and name == "Dockerfile":
            data = self.read_file("dockerfile", limit)
        if data is None:
            raise NotFound("Cannot locate specified Dockerfile: %s" % name)
        return data

    def apply_dockerignore(self) -> None:
        data = self.read_file(".dockerignore", 1 << 20)
        if data is None:
            return
        self.ignore = dockerignore.parse(data.decode("utf-8", "replace"))
        if self.index is not None:
            self.index.apply_dockerignore(self.ignore)  # and to the tree when it is extracted
        else:
            dockerignore.apply(self.root, self.ignore)

    # -- COPY sources ------------------------------------------------------------------------
    def sources(self, pattern: str) -> list[tuple[str, str]]:
        """[(context-relative path, host path)] of a COPY/ADD source (wildcards expanded)."""
        return match_sources(self.root, pattern, "build context")

    def indexed_checksum(self, patterns: list[str]) -> str | None:
        """copier.checksum of these COPY/ADD sources read from the index, without extracting; None when
        the index cannot tell (no index, wildcards, a missing source): the caller extracts and looks."""
        if self.index is None or any(c in p for p in patterns for c in WILDCARDS):
            return None
        try:
            rels = [clean_relative(p, "source") for p in patterns]
        except ContextError:
            return None
        return self.index.checksum(rels)


def match_sources(root: str, pattern: str, where: str) -> list[tuple[str, str]]:
    """Sources under `root` (a context or a stage's rootfs) named by a COPY pattern, resolved inside root."""
    rel = clean_relative(pattern, "source")
    with tarsafe.Scope(root) as scope:
        if not any(c in rel for c in WILDCARDS):
            try:
                real = scope.realpath(rel)
            except (FileNotFoundError, NotADirectoryError):
                real = None
            if real is None or not os.path.lexists(os.path.join(root, real.lstrip("/"))):
                raise NotFound("COPY failed: file not found in %s: stat %s: file does not exist" % (where, pattern))
            return [(rel, os.path.join(root, real.lstrip("/")) if real != "/" else root)]
        # Wildcards: match every path of the tree (no link is followed while walking).
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                relpath = os.path.relpath(full, root)
                if _go_match(rel, relpath):
                    out.append((relpath, full))
        if not out:
            raise NotFound("COPY failed: no source files were specified")
        return out


def _go_match(pattern, name):
    """filepath.Match: like fnmatch, but `*` and `?` never match '/'."""
    if pattern.count("/") != name.count("/"):
        return False
    return all(fnmatch.fnmatchcase(n, p) for p, n in zip(pattern.split("/"), name.split("/")))
