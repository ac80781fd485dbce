"""The index of a build context kept as its tar on disk: what the builder needs of a fully cached rebuild
(the Dockerfile, .dockerignore, the COPY/ADD checksums) without writing the context's files.

Only a simple context is indexed: regular files and directories, each listed once, every parent listed
before its children as a directory, names tarsafe accepts. For those, extraction is fully determined by
the archive (modes: the member's, as tarsafe sets them), so the checksum computed here equals
copier.checksum over the extracted tree. Anything else (links, devices, duplicates, implied parents,
unsafe or broken archives) gets no index: the context is then extracted at once, as before, with
tarsafe's checks and errors.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
import tarfile
from typing import Any

from dockyard.engine.build import dockerignore
from dockyard.engine.images import tarsafe

READ_CHUNK = 1 << 20
NAME_MAX = 255


class Entry:
    """One member: a directory or a regular file whose data lies at `offset` in the tar."""

    __slots__ = ("is_dir", "mode", "offset", "size")

    def __init__(self, is_dir: bool, mode: int, offset: int, size: int) -> None:
        self.is_dir = is_dir
        self.mode = mode  # st_mode after extraction
        self.offset = offset
        self.size = size


class ContextIndex:
    def __init__(self, tar_path: str, entries: dict[str, Entry]) -> None:
        self.tar_path = tar_path
        self.entries = entries  # "a/b" -> Entry
        self.children: dict[str, set[str]] = {"": set()}
        for key, entry in entries.items():
            if entry.is_dir:
                self.children.setdefault(key, set())
            self.children[posixpath.dirname(key)].add(posixpath.basename(key))

    # -- .dockerignore, as dockerignore.apply does it to the tree ----------------------------------
    def apply_dockerignore(self, patterns: list[dockerignore.Pattern]) -> None:
        if not patterns:
            return
        exceptions = any(p.exclusion for p in patterns)
        removed: set[str] = set()
        for key in sorted(self.entries, key=lambda k: k.count("/")):  # parents before children
            entry = self.entries[key]
            if posixpath.dirname(key) in removed or (
                (not entry.is_dir or not exceptions) and dockerignore.excluded(patterns, key)
            ):
                removed.add(key)
        for key in removed:
            del self.entries[key]
            self.children.pop(key, None)
            parent = self.children.get(posixpath.dirname(key))
            if parent is not None:
                parent.discard(posixpath.basename(key))

    # -- reading -------------------------------------------------------------------------------------
    def lookup(self, rel: str) -> Entry | None:
        """The entry at a clean context-relative path ('' is the root, a directory)."""
        if rel == "":
            return Entry(True, stat.S_IFDIR | 0o755, 0, 0)
        return self.entries.get(rel)

    def read(self, entry: Entry, limit: int) -> bytes:
        with open(self.tar_path, "rb") as fh:
            fh.seek(entry.offset)
            return fh.read(min(entry.size, limit + 1))

    def checksum(self, rels: list[str]) -> str | None:
        """copier.checksum of these sources (clean relative paths, no wildcards); None if one is missing."""
        found = [(rel, self.lookup(rel)) for rel in rels]
        if any(entry is None for _, entry in found):
            return None
        h = hashlib.sha256()
        kinds = set()
        with open(self.tar_path, "rb") as fh:
            for rel, entry in found:
                assert entry is not None
                if entry.is_dir:
                    kinds.add("dir")
                    self._hash_tree(fh, rel, "", h)
                else:
                    kinds.add("file")
                    self._hash_entry(fh, posixpath.basename(rel), entry, h)
        kind = kinds.pop() if len(rels) == 1 and len(kinds) == 1 else "multi"
        return "%s:%s" % (kind, h.hexdigest())

    def _hash_tree(self, fh, key, prefix, h):
        """os.walk's order as copier.checksum walks: a directory's sorted entries, then its subdirectories."""
        names = sorted(self.children.get(key, ()))
        subdirs = []
        for name in names:
            child = posixpath.join(key, name) if key else name
            entry = self.entries[child]
            self._hash_entry(fh, prefix + name, entry, h)
            if entry.is_dir:
                subdirs.append((child, prefix + name + "/"))
        for child, sub in subdirs:
            self._hash_tree(fh, child, sub, h)

    @staticmethod
    def _hash_entry(fh, name, entry, h):
        h.update(("%s\0%o\0" % (name, entry.mode)).encode("utf-8", "surrogateescape"))
        if not entry.is_dir:
            fh.seek(entry.offset)
            left = entry.size
            while left:
                chunk = fh.read(min(left, READ_CHUNK))
                if not chunk:
                    raise OSError("the build context's tar ended early")
                h.update(chunk)
                left -= len(chunk)
        h.update(b"\0")


def scan(stream: Any, tar_path: str) -> ContextIndex | None:
    """Read a plain tar stream (any object with read(n); its bytes are also `tar_path`); its index, or None
    if it is not simple."""
    entries: dict[str, Entry] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=READ_CHUNK) as tar:  # fewer, larger reads
            for member in tar:
                entry = _simple_entry(member, entries)
                if entry is None:
                    return None
                entries["/".join(tarsafe.split_member_name(member.name))] = entry
    except (tarfile.TarError, tarsafe.UnsafeArchive, EOFError, UnicodeError):
        return None
    return ContextIndex(tar_path, entries)


def _simple_entry(member: tarfile.TarInfo, entries: dict[str, Entry]) -> Entry | None:
    if not (member.isdir() or (member.isreg() and not member.issparse())):
        return None
    parts = tarsafe.split_member_name(member.name)
    if not parts or any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
        return None
    key = "/".join(parts)
    if key in entries:
        return None
    if len(parts) > 1:
        parent = entries.get("/".join(parts[:-1]))
        if parent is None or not parent.is_dir:  # an implied parent's mode would depend on the umask
            return None
    if member.isdir():
        return Entry(True, stat.S_IFDIR | (member.mode & 0o7777), 0, 0)
    return Entry(False, stat.S_IFREG | (member.mode & 0o7777), member.offset_data, member.size)
