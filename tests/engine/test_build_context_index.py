"""The build context kept as its tar with an index (engine/build/contextindex.py): a simple context (as the
docker CLI sends one) is not extracted to read the Dockerfile, .dockerignore and the COPY/ADD checksums, and
those checksums equal the ones computed over the extracted tree (so cache keys stay what they were); any
other context is extracted at once, and hostile ones are refused as before."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from dockyard.engine.build import copier
from dockyard.engine.build.context import BuildContext, ContextError
from dockyard.engine.errors import NotFound

DOCKERFILE = b"FROM scratch\nCOPY . /\n"


class Trickle(io.RawIOBase):
    """A request body that hands out at most `step` bytes per read, as a socket does."""

    def __init__(self, data: bytes, step: int = 1000):
        self.data, self.pos, self.step = data, 0, step

    def read(self, n: int = -1) -> bytes:
        n = self.step if n is None or n < 0 else min(n, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def cli_tar(members: list[tuple[str, object, int]], end: bool = True) -> bytes:
    """A tar as the CLI writes one: (name, bytes for a file / None for a directory / ('sym'|'lnk', target), mode)."""
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    for name, data, mode in members:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = mode, 1_600_000_000
        if data is None:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif isinstance(data, tuple):
            info.type = tarfile.SYMTYPE if data[0] == "sym" else tarfile.LNKTYPE
            info.linkname = data[1]
            tar.addfile(info)
        else:
            assert isinstance(data, bytes)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if end:
        tar.close()
    else:
        tar.fileobj.write(b"")  # the CLI's `-f -` context: no end-of-archive blocks
    return buf.getvalue()


TREE = [
    ("Dockerfile", DOCKERFILE, 0o644),
    ("config.txt", b"greeting\n", 0o600),
    ("src", None, 0o755),
    ("src/pkg", None, 0o750),
    ("src/pkg/mod.py", b"x = 1\n" * 3000, 0o644),
    ("src/pkg/run.sh", b"#!/bin/sh\n", 0o4755),
    ("src/b.txt", b"b" * 70_000, 0o644),
    ("src/empty", None, 0o700),
    ("src/a-dir", None, 0o755),
    ("src/a-dir/z", b"", 0o644),
    ("scratch.tmp", b"ignored\n", 0o644),
    ("big.bin", os.urandom(3 << 20), 0o644),
]
SOURCES = [["."], ["src"], ["src/"], ["config.txt"], ["src/pkg/run.sh"], ["src", "config.txt"], ["/src/pkg/../b.txt"]]
IGNORES = [b"", b"*.tmp\n", b"src/pkg\n", b"src\n!src/pkg/mod.py\n", b"**/*.sh\nbig.bin\n"]


@pytest.fixture
def contexts(tmp_path):
    made = []

    def make():
        c = BuildContext(str(tmp_path))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
        assert not os.path.exists(c.dir)


@pytest.mark.parametrize("ignore", IGNORES, ids=["none", "tmp", "dir", "exception", "globs"])
def test_index_checksums_equal_the_extracted_trees_and_nothing_is_written(contexts, ignore):
    members = TREE + ([(".dockerignore", ignore, 0o644)] if ignore else [])
    body = cli_tar(members)
    indexed, extracted = contexts(), contexts()
    indexed.receive(Trickle(body))
    extracted.receive(Trickle(body))
    assert indexed.index is not None
    assert indexed.dockerfile("Dockerfile", 1 << 20) == DOCKERFILE
    indexed.apply_dockerignore()
    sums = {tuple(s): indexed.indexed_checksum(s) for s in SOURCES}
    # a fully cached rebuild needs no more than this: no file of the context was written, only its tar
    assert os.listdir(indexed.dir) == ["context.tar"]
    assert extracted.root and extracted.index is None  # extracted on first use of root
    extracted.apply_dockerignore()
    for sources in SOURCES:
        try:
            want = copier.checksum([pair for s in sources for pair in extracted.sources(s)])
        except NotFound:  # ignored: the index does not know it either (the full path reports it)
            want = None
        assert sums[tuple(sources)] == want, sources
    assert any(sums.values())
    # and the index's tree, extracted on demand, is the same tree (.dockerignore applied)
    assert tree_of(indexed.root) == tree_of(extracted.root)
    assert not os.path.exists(indexed.spool)


def tree_of(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if name in filenames else None
            out[os.path.relpath(path, root)] = (st.st_mode, data)
    return out


def test_unended_cli_context_is_indexed_and_missing_sources_are_left_to_the_full_path(contexts):
    c = contexts()
    c.receive(Trickle(cli_tar(TREE, end=False)))
    assert c.index is not None
    assert c.indexed_checksum(["nothere"]) is None
    assert c.indexed_checksum(["src/*.txt"]) is None  # wildcards: matched on the extracted tree
    assert c.indexed_checksum(["../x"]) is None
    assert c.read_file("nothere", 100) is None
    with pytest.raises(ContextError, match="not a regular file"):
        c.read_file("src", 100)
    with pytest.raises(ContextError, match="larger than"):
        c.read_file("big.bin", 100)
    assert os.listdir(c.dir) == ["context.tar"]


@pytest.mark.parametrize(
    "members",
    [
        [("Dockerfile", DOCKERFILE, 0o644), ("l", ("sym", "Dockerfile"), 0o777)],
        [("Dockerfile", DOCKERFILE, 0o644), ("h", ("lnk", "Dockerfile"), 0o644)],
        [("Dockerfile", DOCKERFILE, 0o644), ("Dockerfile", b"FROM busybox\n", 0o644)],
        [("Dockerfile", DOCKERFILE, 0o644), ("implied/parent", b"1", 0o644)],
    ],
    ids=["symlink", "hardlink", "duplicate", "implied-parent"],
)
def test_other_contexts_are_extracted_at_once(contexts, members):
    c = contexts()
    c.receive(Trickle(cli_tar(members)))
    assert c.index is None
    assert not os.path.exists(c.spool)
    assert os.path.isdir(os.path.join(c.dir, "context"))
    assert c.dockerfile("Dockerfile", 1 << 20) == dict((m[0], m[1]) for m in members)["Dockerfile"]


@pytest.mark.parametrize(
    "members, message",
    [
        ([("Dockerfile", DOCKERFILE, 0o644), ("../escape", b"1", 0o644)], "contains '..'"),
        ([("Dockerfile", DOCKERFILE, 0o644), ("/abs", b"1", 0o644)], "is absolute"),
        ([("Dockerfile", DOCKERFILE, 0o644), ("l", ("sym", "/etc/passwd"), 0o777)], "points to the absolute path"),
        ([("d", None, 0o755), ("d/l", ("sym", "../../outside"), 0o777)], "points outside"),
        ([("Dockerfile", DOCKERFILE, 0o644), ("h", ("lnk", "../../etc/passwd"), 0o644)], "contains '..'"),
    ],
    ids=["dotdot", "absolute", "absolute-link", "climbing-link", "hardlink-out"],
)
def test_hostile_contexts_are_still_refused_when_they_arrive(contexts, tmp_path, members, message):
    c = contexts()
    with pytest.raises(ContextError, match=message):
        c.receive(Trickle(cli_tar(members)))
    assert c.index is None
    assert not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()
