"""engine/images/layergzip.py: pushed layers' gzip. Every reader gets the input back (Python's gzip, the
gzip tool), the same input gives the same bytes, text is compressed and random bytes are stored."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import subprocess

import pytest

from dockyard.engine.images import layergzip

RNG = random.Random(7)
TEXT = b"".join(b"line %d of a text file, with words that repeat\n" % i for i in range(60000))
RANDOM = RNG.randbytes(3 * layergzip.CHUNK + 12345)
CASES = {
    "empty": b"",
    "text": TEXT,
    "random": RANDOM,
    # compressible and incompressible MiBs in turn: stored blocks between compressed ones
    "mixed": TEXT[: layergzip.CHUNK] + RANDOM[: layergzip.CHUNK] + TEXT[: 2 * layergzip.CHUNK] + RANDOM[:777],
    "one-byte": b"x",
}


def gz(data: bytes) -> bytes:
    out = io.BytesIO()
    layergzip.gzip_to(io.BytesIO(data), out.write)
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(CASES))
def test_readers_get_the_input_back_and_output_repeats(name):
    data = CASES[name]
    blob = gz(data)
    assert gzip.decompress(blob) == data
    assert gz(data) == blob
    if shutil.which("gzip"):
        p = subprocess.run(["gzip", "-dc"], input=blob, capture_output=True)
        assert p.returncode == 0 and p.stdout == data, p.stderr


def test_text_is_compressed_and_random_bytes_are_stored():
    assert len(gz(TEXT)) < len(TEXT) // 5
    blob = gz(RANDOM)
    # stored: 5 bytes of block header per 64 KiB, the gzip header and trailer, the flushes' empty blocks
    assert len(RANDOM) < len(blob) < len(RANDOM) * 1.001


def test_the_header_is_what_gzip_writes_at_level_1():
    expected = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=expected, compresslevel=1, mtime=0) as f:
        f.write(b"abc")
    assert gz(b"abc")[:10] == expected.getvalue()[:10] == layergzip.HEADER
