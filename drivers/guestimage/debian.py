"""Debian's official cloud image (bookworm, genericcloud qcow2) for the host's architecture: downloaded once
(resumable, with progress), verified against the SHA512SUMS published next to it, cached by digest.

Nothing unverified is ever booted: the download grows in a `.part` file that is only renamed into the cache
once its SHA-512 matches the published sum. The sums are fetched on every create (a few hundred bytes) so a
new point release is picked up; when they cannot be fetched, the newest verified image in the cache is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import platform
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from dockyard.drivers.guestimage import build, source
from dockyard.provisioner.core.errors import DriverError

# Debian's own publication point of its cloud images (not a package mirror).
DEFAULT_URL_BASE = "https://cloud.debian.org/images/cloud/bookworm/latest/"
URL_BASE_ENV = "DOCKYARD_QEMU_IMAGE_URL_BASE"
SUMS = "SHA512SUMS"
CHUNK = 1 << 20
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
SHA512_RE = re.compile(r"^[0-9a-f]{128}$")
LATEST = "latest.json"


class DownloadUnavailable(DriverError):
    """The image could not be fetched at all (no network, server down, HTTP error): a fallback may apply.
    A download that arrived but failed verification is a plain DriverError and never falls back silently."""


@dataclasses.dataclass
class Published:
    url: str
    filename: str
    sha512: str


def debian_arch(machine: str = "") -> str:
    m = machine or platform.machine()
    if m not in ARCHES:
        raise DriverError(f"Debian publishes no cloud image for this host's architecture ({m})")
    return ARCHES[m]


def image_filename(arch: str) -> str:
    return f"debian-12-genericcloud-{arch}.qcow2"


def url_base(value: str = "") -> str:
    base = value or os.environ.get(URL_BASE_ENV) or DEFAULT_URL_BASE
    if not base.startswith(("http://", "https://")):
        raise DriverError(f"the cloud image URL base must be an http(s) URL, got {base!r}")
    return base if base.endswith("/") else base + "/"


def parse_sums(text: str, filename: str) -> str:
    """The SHA-512 of filename in a SHA512SUMS file ("<hex>  <name>" lines), or a DriverError."""
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].lstrip("*") == filename and SHA512_RE.match(words[0].lower()):
            return words[0].lower()
    raise DriverError(f"{SUMS} lists no valid SHA-512 for {filename}")


def _open(url: str, timeout: float, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": "dockyard", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadUnavailable(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise DownloadUnavailable(f"cannot download {url}: {reason}") from None


def published(base: str, arch: str, timeout: float = 30) -> Published:
    """Which file Debian publishes for arch under base, and its SHA-512 from SHA512SUMS."""
    filename = image_filename(arch)
    with _open(base + SUMS, timeout) as resp:
        text = resp.read(1 << 20).decode(errors="replace")
    return Published(base + filename, filename, parse_sums(text, filename))


def _root(cache_dir: str) -> str:
    root = os.path.join(build.cache_root(cache_dir), "debian")
    os.makedirs(root, mode=0o755, exist_ok=True)
    return root


def _entry_dir(cache_dir: str, sha512: str) -> str:
    return os.path.join(_root(cache_dir), f"sha512-{sha512[:32]}")


def _image(d: str, description: str) -> build.GuestImage:
    return build.GuestImage(disk=os.path.join(d, "disk.qcow2"), description=description)


def cached(cache_dir: str, sha512: str) -> build.GuestImage | None:
    d = _entry_dir(cache_dir, sha512)
    return (
        _image(d, f"Debian cloud image (sha512 {sha512[:16]})")
        if os.path.exists(os.path.join(d, "disk.qcow2"))
        else None
    )


def newest_cached(cache_dir: str, filename: str) -> build.GuestImage | None:
    """The last image verified for filename (used when the sums cannot be fetched)."""
    try:
        with open(os.path.join(_root(cache_dir), LATEST)) as f:
            sha = json.load(f).get(filename, "")
    except (OSError, ValueError, AttributeError):
        return None
    return cached(cache_dir, sha) if SHA512_RE.match(str(sha)) else None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def download(
    url: str, sha512: str, dest: str, log: Callable[[str], None], timeout: float = 60, report_every: float = 2.0
) -> None:
    """Fetch url to dest, resuming dest + ".part" where an earlier attempt stopped (HTTP Range); dest appears
    only when the whole file's SHA-512 is sha512. A mismatch deletes the partial file (a fresh start next time)."""
    part = dest + ".part"
    h = hashlib.sha512()
    have = 0
    if os.path.exists(part):
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                have += len(chunk)
    headers = {"Range": f"bytes={have}-"} if have else {}
    resp = _open(url, timeout, headers)
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # the server ignored the range: start over
            h, have = hashlib.sha512(), 0
        length = int(resp.headers.get("Content-Length") or 0)
        total = have + length if length else 0
        resumed = f", resuming at {_human(have)}" if have else ""
        log(f"Downloading {url} ({_human(total) if total else 'size unknown'}{resumed})")
        started = last = time.monotonic()
        got = 0
        with open(part, "ab" if have else "wb") as out:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadUnavailable(
                        f"download of {url} broke off at {_human(have + got)}: {e}; run the command again to resume"
                    ) from None
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                now = time.monotonic()
                if now - last >= report_every:
                    rate = got / max(now - started, 1e-6)
                    pct = f"{(have + got) * 100 // total}% " if total else ""
                    log(f"  {pct}{_human(have + got)}{' of ' + _human(total) if total else ''} at {_human(rate)}/s")
                    last = now
    if total and have + got != total:
        raise DownloadUnavailable(
            f"download of {url} broke off at {_human(have + got)} of {_human(total)}; run the command again to resume"
        )
    secs = time.monotonic() - started
    log(f"  Downloaded {_human(have + got)} in {secs:.1f}s ({_human(got / max(secs, 1e-6))}/s); verifying...")
    digest = h.hexdigest()
    if digest != sha512:
        os.unlink(part)
        raise DriverError(
            f"download of {url} has SHA-512 {digest[:32]}..., not the published {sha512[:32]}...: "
            "it was deleted and will not be used"
        )
    os.replace(part, dest)


def ensure(base: str, cache_dir: str, log: Callable[[str], None], arch: str = "") -> build.GuestImage:
    """Debian's cloud image for arch (default: the host's), downloaded and verified once, then from the cache.
    DownloadUnavailable when it is neither cached nor downloadable."""
    arch = arch or debian_arch()
    filename = image_filename(arch)
    try:
        pub = published(base, arch)
    except DownloadUnavailable as e:
        fallback = newest_cached(cache_dir, filename)
        if fallback:
            log(f"Warning: {e}; using the cached {filename}")
            return fallback
        raise
    hit = cached(cache_dir, pub.sha512)
    if hit:
        log(f"Using the cached {filename} (SHA-512 {pub.sha512[:16]}..., as published)")
        return hit
    d = _entry_dir(cache_dir, pub.sha512)
    os.makedirs(d, mode=0o755, exist_ok=True)
    with open(os.path.join(d, ".lock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # a second create waits for the first download instead of racing it
        hit = cached(cache_dir, pub.sha512)
        if hit:
            return hit
        tmp = os.path.join(d, "download")
        download(pub.url, pub.sha512, tmp, log)
        try:
            fmt = source.image_format(tmp)
            if fmt != "qcow2":
                raise DriverError(f"{pub.url} is a {fmt} image, not qcow2")
        except DriverError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.chmod(tmp, 0o444)
        os.replace(tmp, os.path.join(d, "disk.qcow2"))
        with open(os.path.join(d, "source.json"), "w") as f:
            json.dump({"url": pub.url, "sha512": pub.sha512, "cached": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
        _remember(cache_dir, filename, pub.sha512)
    log(f"  Verified against {SUMS} and cached ({pub.filename}).")
    return _image(d, f"Debian cloud image {pub.filename} (sha512 {pub.sha512[:16]})")


def _remember(cache_dir: str, filename: str, sha512: str) -> None:
    path = os.path.join(_root(cache_dir), LATEST)
    try:
        with open(path) as f:
            latest = json.load(f)
        if not isinstance(latest, dict):
            latest = {}
    except (OSError, ValueError):
        latest = {}
    latest[filename] = sha512
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(latest, f)
    os.replace(tmp, path)
