"""Images given by the user (--*-image): an http(s) URL verified by sha256, or a local file; cached as qcow2.

Downloads land in a temporary file, are hashed while they stream, and are kept only when the digest
matches; a mismatch or a broken transfer deletes the file, so nothing unverified is ever booted.
"""

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

from dockyard.drivers.guestimage import build, tools
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("qcow2", "raw", "vdi", "vmdk", "vhdx", "vpc")
CHUNK = 1 << 20


def is_url(source):
    return source.startswith(("http://", "https://"))


def check(source, sha256, flag):
    """Pre-create check of --<driver>-image and --<driver>-image-sha256 (flag: e.g. "qemu-image")."""
    if not source:
        return
    if sha256 and not SHA256_RE.match(sha256.lower()):
        raise PreCreateCheckError(f"--{flag}-sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if is_url(source):
        if not sha256:
            raise PreCreateCheckError(
                f"--{flag} {source} needs --{flag}-sha256: downloads are only used once verified "
                f"(take the digest from the publisher's SHA256SUMS)"
            )
    elif "://" in source:
        raise PreCreateCheckError(
            f"--{flag}: only http:// and https:// URLs or local files are supported, got {source}"
        )
    elif not os.path.isfile(source):
        raise PreCreateCheckError(f"--{flag}: no such file: {source}")


def resolve(source, sha256, cache_dir, log):
    """The GuestImage to boot: dockyard's own (built once) when source is empty, else the user's, cached."""
    if not source:
        return build.ensure_image(cache_dir, log)
    root = os.path.join(build.cache_root(cache_dir), "user")
    os.makedirs(root, exist_ok=True)
    sha256 = (sha256 or "").lower()
    if is_url(source):
        key = hashlib.sha256(f"{source}\n{sha256}".encode()).hexdigest()[:24]
        d = os.path.join(root, f"url-{key}")
        disk = os.path.join(d, "disk.qcow2")
        if not os.path.exists(disk):
            os.makedirs(d, exist_ok=True)
            part = download(source, sha256, d, log)
            _to_qcow2(part, disk, log)
            _write_info(d, {"url": source, "sha256": sha256})
        return build.GuestImage(disk=disk, description=source)
    path = os.path.abspath(source)
    digest = file_sha256(path)
    if sha256 and digest != sha256:
        raise DriverError(f"{path} has sha256 {digest}, not the expected {sha256}; refusing to use it")
    d = os.path.join(root, f"file-{digest[:24]}")
    disk = os.path.join(d, "disk.qcow2")
    if not os.path.exists(disk):
        os.makedirs(d, exist_ok=True)
        _to_qcow2(path, disk, log, keep_source=True)
        _write_info(d, {"path": path, "sha256": digest})
    return build.GuestImage(disk=disk, description=path)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(url, sha256, dest_dir, log, timeout=60):
    """Fetch url into dest_dir/download (hashing as it streams); keep it only if its sha256 matches."""
    final = os.path.join(dest_dir, "download")
    tmp = f"{final}.part-{os.getpid()}"
    h = hashlib.sha256()
    done, total = 0, None
    try:
        with (
            urllib.request.urlopen(
                urllib.request.Request(url, headers={"User-Agent": "dockyard"}), timeout=timeout
            ) as resp,
            open(tmp, "wb") as out,
        ):
            total = int(resp.headers.get("Content-Length") or 0) or None
            log(f"Downloading {url}" + (f" ({total / (1 << 20):.1f} MiB)..." if total else "..."))
            last_report, next_pct = time.monotonic(), 10
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if total and done * 100 >= next_pct * total and done < total:
                    log(f"  {done * 100 // total}% ({done / (1 << 20):.1f} MiB)")
                    next_pct = done * 100 // total // 10 * 10 + 10
                elif not total and now - last_report > 5:
                    log(f"  {done / (1 << 20):.1f} MiB")
                    last_report = now
        if total is not None and done != total:
            raise DriverError(f"download of {url} broke off after {done} of {total} bytes; nothing was kept")
        digest = h.hexdigest()
        if digest != sha256:
            raise DriverError(
                f"download of {url} has sha256 {digest}, not the expected {sha256}: it was deleted and will not be used"
            )
        os.replace(tmp, final)
        log(f"  Download verified (sha256 {digest[:16]}...).")
        return final
    except urllib.error.HTTPError as e:
        raise DriverError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise DriverError(f"cannot download {url}: {reason}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def image_format(path):
    """The disk format qemu-img detects, or a DriverError for a file that is no disk image it accepts."""
    qemu_img = tools.find("qemu-img") or "qemu-img"
    try:
        p = subprocess.run([qemu_img, "info", "--output=json", path], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise DriverError(f"cannot run {qemu_img}: {e.strerror}") from None
    if p.returncode != 0:
        raise DriverError(f"{path} is not a usable disk image: {p.stderr.strip()[-300:]}")
    info = json.loads(p.stdout)
    fmt = info.get("format", "")
    if info.get("backing-filename"):
        # A backing file would make QEMU read a host file of the image's choosing.
        raise DriverError(f"{path} refers to a backing file ({info['backing-filename']}); give a standalone image")
    if fmt not in FORMATS:
        raise DriverError(f"{path} is a {fmt or 'unknown'} image; supported: {', '.join(FORMATS)}")
    return fmt


def _to_qcow2(src, disk, log, keep_source=False):
    """A standalone qcow2 copy of src at disk (renamed when src already is one and need not stay)."""
    fmt = image_format(src)
    if fmt == "qcow2" and not keep_source:
        os.replace(src, disk)
    else:
        log(f"  Converting the {fmt} image to qcow2..." if fmt != "qcow2" else "  Copying the image into the cache...")
        tmp = f"{disk}.tmp-{os.getpid()}"
        p = subprocess.run(
            [tools.find("qemu-img") or "qemu-img", "convert", "-f", fmt, "-O", "qcow2", src, tmp],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise DriverError(f"cannot convert {src} to qcow2: {p.stderr.strip()[-300:]}")
        os.replace(tmp, disk)
        if not keep_source:
            os.unlink(src)
    os.chmod(disk, 0o444)


def _write_info(d, info):
    with open(os.path.join(d, "source.json"), "w") as f:
        json.dump(dict(info, cached=time.strftime("%Y-%m-%dT%H:%M:%S%z")), f, indent=1)
