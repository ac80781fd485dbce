"""The one check for content digests that come from outside (image configs, manifests, archives, registries, API).

Digests name files in the data-root (layers/<hex>, configs/<hex>.json, blobs/sha256/<hex> in archives),
so a digest that is anything but "sha256:" and 64 lowercase hex digits could name another path
(`sha256:<hex>/diff/x`, `sha256:../../etc`). Every digest taken from an image, an archive, a registry or
a request goes through check() before it is used for anything; a malformed one is a 400 and nothing
has been written yet.
"""

from __future__ import annotations

import hashlib
import re

from dockyard.engine.errors import InvalidParameter

# \Z, not $: "$" also matches before a trailing newline.
SHA256_DIGEST = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
_SHOWN_MAX = 80


def is_sha256(value: object) -> bool:
    """True if value is a well-formed sha256 digest string."""
    return isinstance(value, str) and SHA256_DIGEST.match(value) is not None


def check(value: object, what: str = "digest") -> str:
    """value if it is 'sha256:' + 64 lowercase hex digits; InvalidParameter (400) otherwise."""
    if is_sha256(value):
        return value  # type: ignore[return-value]  # is_sha256 made sure it is a str
    shown = repr(value)
    if len(shown) > _SHOWN_MAX:
        shown = shown[: _SHOWN_MAX - 3] + "..."
    raise InvalidParameter(
        'invalid %s %s: a digest must be "sha256:" followed by 64 lowercase hex digits' % (what, shown)
    )


def hex_of(value: object, what: str = "digest") -> str:
    """The 64 hex digits of a checked sha256 digest (safe to use as a file name)."""
    return check(value, what)[len("sha256:") :]


def of_bytes(data: bytes) -> str:
    """'sha256:<hex>' of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
