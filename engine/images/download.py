"""Layer downloads of `docker pull`: parallel, resumable, and never twice at once.

Up to max_concurrent layers of one pull download at the same time (the engine's
--max-concurrent-downloads, 3 by default as dockerd's). A blob is written to <image>/tmp/downloads/<hex>.partial;
when the connection breaks, the next attempt asks for the rest with `Range: bytes=N-`
and the sha256 is computed over the whole file on disk, so a resumed blob is verified
exactly like one fetched in one go (and a blob that fails verification is deleted, never
resumed). Two pulls that need the same layer share one download: the second waits for
the first and then finds the layer stored. Progress messages are the JSON the docker
CLI renders (moby's jsonmessage), with the short blob digest as id.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import logging
import os
import threading
from typing import Any, Callable

from dockyard.engine.errors import SystemFailure
from dockyard.engine.images import digest

log = logging.getLogger("dockyard.engine.images")

MAX_CONCURRENT = 3  # dockerd's default max-concurrent-downloads
MAX_ATTEMPTS = 5  # dockerd's maxDownloadAttempts
CHUNK = 1 << 20
PROGRESS_STEP = 512 << 10
MAX_ERROR_BODY = 64 << 10  # error answers are only shown, never kept  # a Downloading message at most every 512 KiB

_inflight_lock = threading.Lock()
_inflight: dict[tuple[str, str], threading.Event] = {}


class DownloadError(SystemFailure):
    """A blob download failed for good: bad content, too large, an error answer, or no attempts left."""


class TransferBroken(Exception):
    """The connection broke before the whole blob arrived: the next attempt resumes it."""


def human_size(n: float) -> str:
    """docker's units.HumanSize: 3 significant digits, decimal units ("1.23MB")."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return "%.3g%s" % (n, unit)
        n /= 1000.0
    return "%.3g%s" % (n, "TB")


def progress_bar(current: int, total: int) -> str:
    """moby's JSONProgress string: a 50-column bar and current/total."""
    bar = ""
    if total > 0 and current <= total:
        filled = min(50, int(current * 100 / total) // 2)
        bar = "[%s>%s] " % ("=" * filled, " " * (50 - filled))
    return "%s%8s/%s" % (bar, human_size(current), human_size(total))


def _claim(key: tuple[str, str]) -> threading.Event | None:
    """None if this caller now owns the download of key; else the Event of the one already running."""
    with _inflight_lock:
        running = _inflight.get(key)
        if running is not None:
            return running
        _inflight[key] = threading.Event()
        return None


def _release(key: tuple[str, str]) -> None:
    with _inflight_lock:
        event = _inflight.pop(key, None)
    if event is not None:
        event.set()


def fetch_blob(
    reg: Any,
    blob_digest: str,
    path: str,
    size: int,
    progress: Callable[[int], None] | None = None,
    verifying: Callable[[], None] | None = None,
) -> None:
    """Download blob_digest into path (resuming what path already holds) and verify it.

    More than `size` bytes, an error answer, or content that does not hash to blob_digest is a
    DownloadError, and the partial file is removed; a broken connection is retried up to
    MAX_ATTEMPTS times from what is on disk.
    """
    digest.hex_of(blob_digest, "blob digest")
    last: Exception | None = None
    for attempt in range(MAX_ATTEMPTS):
        try:
            _fetch_once(reg, blob_digest, path, size, progress)
            break
        except TransferBroken as exc:
            last = exc
            log.info("download of %s broke (attempt %d): %s; resuming", blob_digest, attempt + 1, exc)
        except BaseException:
            _unlink(path)
            raise
    else:
        raise DownloadError("error downloading %s: %s" % (blob_digest, last))
    if verifying:
        verifying()
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
    if "sha256:" + sha.hexdigest() != blob_digest:
        _unlink(path)
        raise DownloadError("blob %s failed verification: its content is sha256:%s" % (blob_digest, sha.hexdigest()))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fetch_once(reg, blob_digest, path, size, progress):
    have = os.path.getsize(path) if os.path.exists(path) else 0
    if have > size:
        raise DownloadError("blob %s is larger than its descriptor says (%d bytes)" % (blob_digest, size))
    if have == size and size > 0:
        return  # everything is on disk already; the caller verifies it
    headers = {"Range": "bytes=%d-" % have} if have else None
    resp = reg.request("/v2/%s/blobs/%s" % (reg.repository, blob_digest), headers=headers)
    try:
        if resp.status == 206 and have:
            if not (resp.headers.get("content-range") or "").startswith("bytes %d-" % have):
                raise DownloadError("registry %s answered a range request with the wrong range" % reg.host)
            mode = "ab"
        elif resp.status == 200:
            have, mode = 0, "wb"  # the registry ignored Range: start over
        else:
            body = resp.read_limited(MAX_ERROR_BODY, "the registry's error answer")
            reg.raise_error(resp.status, body, blob_digest)
            raise DownloadError("registry %s answered %d for %s" % (reg.host, resp.status, blob_digest))
        total = have
        reported = total
        with open(path, mode) as out:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise TransferBroken(str(exc) or type(exc).__name__) from None
                if not chunk:
                    break
                total += len(chunk)
                if total > size:
                    raise DownloadError("blob %s is larger than its descriptor says (%d bytes)" % (blob_digest, size))
                out.write(chunk)
                if progress and (total - reported >= PROGRESS_STEP or total == size):
                    reported = total
                    progress(total)
        if total < size:
            raise TransferBroken("connection closed after %d of %d bytes" % (total, size))
    finally:
        resp.close()


def pull_layers(store, reg, layers, diff_ids, emit, max_concurrent=MAX_CONCURRENT) -> list[tuple[str, dict]]:
    """Download, verify and store the layers not yet in the store; returns [(diff_id, desc)] it added.

    emit must be safe to call from several threads. On an error the other downloads stop at
    their next layer and the first error is raised; layers already added are returned through
    the exception's `added` attribute so the caller can remove them.
    """
    added: list[tuple[str, dict]] = []
    todo = []
    for desc, diff_id in zip(layers, diff_ids):
        sid = desc["digest"].split(":", 1)[-1][:12]
        if store.layers.exists(diff_id):
            emit({"status": "Already exists", "progressDetail": {}, "id": sid})
        else:
            todo.append((sid, desc, diff_id))
    for i, (sid, _, _) in enumerate(todo):
        emit({"status": "Pulling fs layer", "progressDetail": {}, "id": sid})
    for i, (sid, _, _) in enumerate(todo):
        if i >= max_concurrent:
            emit({"status": "Waiting", "progressDetail": {}, "id": sid})
    failed = threading.Event()
    lock = threading.Lock()

    def one(sid, desc, diff_id):
        if failed.is_set():
            return
        if _pull_one(store, reg, sid, desc, diff_id, emit):
            with lock:
                added.append((diff_id, desc))

    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_concurrent), thread_name_prefix="pull") as pool:
        futures = [pool.submit(one, *item) for item in todo]
        for fut in futures:
            try:
                fut.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others stopped
                failed.set()
                errors.append(exc)
    if errors:
        errors[0].added = added  # type: ignore[attr-defined]
        raise errors[0]
    return added


def _pull_one(store, reg, sid, desc, diff_id, emit) -> bool:
    """One layer: wait for a download of it already running elsewhere, or download and ingest it."""
    # keyed by blob: the partial file is per blob digest, so one writer per blob (a config that lies
    # about a shared blob's diff ID only makes its own pull download again, after this one)
    key = (store.layers.root, desc["digest"])
    while True:
        running = _claim(key)
        if running is None:
            break
        emit({"status": "Waiting", "progressDetail": {}, "id": sid})
        running.wait()
        if store.layers.exists(diff_id):
            emit({"status": "Download complete", "progressDetail": {}, "id": sid})
            emit({"status": "Pull complete", "progressDetail": {}, "id": sid})
            return False
        # the other pull failed: try ourselves
    try:
        if store.layers.exists(diff_id):
            emit({"status": "Already exists", "progressDetail": {}, "id": sid})
            return False
        size = desc["size"]
        downloads = os.path.join(store.layers.tmp, "downloads")
        os.makedirs(downloads, mode=0o700, exist_ok=True)
        path = os.path.join(downloads, digest.hex_of(desc["digest"], "layer digest") + ".partial")

        def progress(done):
            emit(
                {
                    "status": "Downloading",
                    "progressDetail": {"current": done, "total": size},
                    "progress": progress_bar(done, size),
                    "id": sid,
                }
            )

        emit({"status": "Downloading", "progressDetail": {"current": 0, "total": size}, "id": sid})
        fetch_blob(
            reg,
            desc["digest"],
            path,
            size,
            progress,
            lambda: emit({"status": "Verifying Checksum", "progressDetail": {}, "id": sid}),
        )
        emit({"status": "Download complete", "progressDetail": {}, "id": sid})
        try:
            with open(path, "rb") as blob:
                emit(
                    {
                        "status": "Extracting",
                        "progressDetail": {"current": size, "total": size},
                        "progress": progress_bar(size, size),
                        "id": sid,
                    }
                )
                store.layers.ingest(blob, expected=diff_id)
        finally:
            _unlink(path)  # verified or refused: either way never resumed
        emit({"status": "Pull complete", "progressDetail": {}, "id": sid})
        return True
    finally:
        _release(key)
