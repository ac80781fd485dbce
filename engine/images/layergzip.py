"""gzip for pushed layers: one standard gzip member (RFC 1952) whose deflate stream stores what does not
compress instead of searching it for matches.

Compressing is most of a push's time, and layers hold much that is compressed already (binaries, archives,
images). Each MiB is first sampled: when zlib at level 1 cannot shrink the sample, the MiB goes out as
stored deflate blocks (a copy and a CRC); otherwise it is compressed at level 1. Before stored blocks the
compressor is flushed with Z_FULL_FLUSH, which aligns its output to a byte and forgets its history, so no
later match refers across the stored bytes it never saw. Any gzip reader reads the result; the same input
always gives the same bytes (mtime 0, no name), so a re-push keeps its digest.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Callable

LEVEL = 1  # zlib's fastest, as go-containerregistry (crane, ko) pushes
CHUNK = 1 << 20
SAMPLE = 64 << 10
STORED_MAX = 0xFFFF  # a stored block holds at most this many bytes
INCOMPRESSIBLE = 0.97  # a sample that does not get below this share of its size is stored
# ID1 ID2, deflate, no flags, mtime 0, XFL 4 (fastest), OS 255 (unknown): what gzip.GzipFile writes at level 1
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


def compresses(sample: bytes) -> bool:
    """Whether zlib at LEVEL makes `sample` noticeably smaller."""
    return len(zlib.compress(sample, LEVEL)) < len(sample) * INCOMPRESSIBLE


def stored_blocks(data: bytes) -> bytes:
    """`data` as non-final stored deflate blocks (the output must be at a byte boundary)."""
    out = []
    view = memoryview(data)
    for start in range(0, len(data), STORED_MAX):
        piece = view[start : start + STORED_MAX]
        out.append(b"\x00" + struct.pack("<HH", len(piece), len(piece) ^ 0xFFFF))
        out.append(piece.tobytes())
    return b"".join(out)


def gzip_to(src: BinaryIO, write: Callable[[bytes], object]) -> None:
    """Read src to its end and write it gzip'd (see the module doc) through write()."""
    write(HEADER)
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = size = 0
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        if compresses(chunk[:SAMPLE]):
            write(comp.compress(chunk))
        else:
            write(comp.flush(zlib.Z_FULL_FLUSH))
            write(stored_blocks(chunk))
    write(comp.flush(zlib.Z_FINISH))
    write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
