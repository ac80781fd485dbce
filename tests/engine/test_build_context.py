"""The build context as the engine receives it (engine/build/context.py), without an engine: a plain tar is
spooled while it arrives, read in small pieces as a socket gives it, also when it lacks the end-of-archive
blocks (the CLI's `-f -` context), and extracted (these contexts imply their parent directories, so they
get no index: test_build_context_index.py); compressed ones are undone; anything unsafe or empty is refused."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from dockyard.engine.build.context import BuildContext, ContextError


class Trickle(io.RawIOBase):
    """A request body that hands out at most `step` bytes per read, as a socket does."""

    def __init__(self, data: bytes, step: int = 1000):
        self.data, self.pos, self.step = data, 0, step
        self.reads = 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        n = self.step if n is None or n < 0 else min(n, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def tar_of(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def unended(files: dict[str, bytes]) -> bytes:
    """The members without the end-of-archive blocks, the last one unpadded (what the CLI's `-f -` sends)."""
    raw = tar_of(files)
    last = list(files.values())[-1]
    end = raw.rfind(last) + len(last)
    return raw[:end]


FILES = {"Dockerfile": b"FROM scratch\nCOPY . /\n", "src/a.txt": b"a" * 70_000, "src/b.txt": b"b" * 1234}


@pytest.fixture
def ctx(tmp_path):
    c = BuildContext(str(tmp_path))
    yield c
    c.close()
    assert not os.path.exists(c.dir)


def extracted(c: BuildContext) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(c.root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, c.root)] = fh.read()
    return out


@pytest.mark.parametrize(
    "body", [tar_of(FILES), unended(FILES), tar_of(FILES) + b"\0" * 9000], ids=["ended", "unended", "trailing"]
)
def test_a_plain_tar_is_spooled_as_it_arrives_and_extracted(ctx, body):
    trickle = Trickle(body)
    assert ctx.receive(trickle) == len(body)  # everything is read, also what follows the archive's end
    assert extracted(ctx) == FILES
    assert os.listdir(ctx.dir) == ["context"]  # the spool is gone once extracted


def test_a_compressed_context_is_undone(ctx):
    body = gzip.compress(unended(FILES))
    assert ctx.receive(Trickle(body)) == len(body)
    assert extracted(ctx) == FILES


def test_an_empty_context_is_refused(ctx):
    with pytest.raises(ContextError, match="the build context is empty"):
        ctx.receive(Trickle(b""))


@pytest.mark.parametrize(
    "body, message",
    [
        (tar_of({"x": b"1"}, {"link": "/etc/passwd"}), "points to the absolute path"),
        (tar_of({"../escape": b"1"}), "invalid build context"),
        (b"not a tar at all, just some bytes" * 40, "invalid build context"),
    ],
    ids=["absolute-link", "dotdot", "garbage"],
)
def test_unsafe_or_broken_contexts_are_refused(ctx, tmp_path, body, message):
    with pytest.raises(ContextError, match=message):
        ctx.receive(Trickle(body))
    assert not (tmp_path / "escape").exists()
