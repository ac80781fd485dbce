"""COPY and ADD: sources (from the context, a stage or an image) written into a step's root filesystem.

Sources are resolved inside their own root (context or image rootfs); the destination is resolved
inside the step container's rootfs the way the container would see it (tarsafe.Scope: symlinks
stay inside the root), and the files are written by tarsafe, so neither side can name a host path.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Callable

from dockyard.engine.build.context import ContextError
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images import tarsafe
from dockyard.engine.runtime import userdb

URL_TIMEOUT = 60.0
COPY_CHUNK = 1 << 20


# -- checksums (the cache key of COPY/ADD) ----------------------------------------------------
def _hash_file(path, h):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        while True:
            chunk = fh.read(COPY_CHUNK)
            if not chunk:
                break
            h.update(chunk)


def _hash_entry(rel, path, h):
    st = os.lstat(path)
    h.update(("%s\0%o\0" % (rel, st.st_mode)).encode("utf-8", "surrogateescape"))
    if stat.S_ISLNK(st.st_mode):
        h.update(os.readlink(path).encode("utf-8", "surrogateescape"))
    elif stat.S_ISREG(st.st_mode):
        _hash_file(path, h)
    h.update(b"\0")


def checksum(sources: list[tuple[str, str]]) -> str:
    """'file:<sha>' / 'dir:<sha>' / 'multi:<sha>' of the sources' names, modes, link targets and content."""
    h = hashlib.sha256()
    kinds = set()
    for rel, path in sources:
        if os.path.isdir(path) and not os.path.islink(path):
            kinds.add("dir")
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(dirnames + filenames):
                    full = os.path.join(dirpath, name)
                    _hash_entry(os.path.relpath(full, path), full, h)
        else:
            kinds.add("file")
            _hash_entry(posixpath.basename(rel), path, h)
    kind = kinds.pop() if len(sources) == 1 and len(kinds) == 1 else "multi"
    return "%s:%s" % (kind, h.hexdigest())


# -- ownership -------------------------------------------------------------------------------
def _root_file(root, path):
    """Host path of a file inside an image rootfs (links resolved inside it), or None."""
    try:
        with tarsafe.Scope(root) as scope:
            real = scope.realpath(path)
    except OSError:
        return None
    full = os.path.join(root, real.lstrip("/"))
    return full if os.path.isfile(full) and not os.path.islink(full) else None


def resolve_chown(spec: str, root: str) -> tuple[int, int]:
    """--chown=user[:group] -> (uid, gid); names are looked up in the rootfs' /etc/passwd and /etc/group."""
    user, _, group = spec.partition(":")
    if not user:
        raise InvalidParameter("invalid --chown value %r" % spec)
    passwd = _root_file(root, "/etc/passwd") or "/nonexistent"
    groups = _root_file(root, "/etc/group") or "/nonexistent"
    try:
        uid = int(user) if user.isdigit() else userdb.resolve(user, passwd=passwd, group=groups)[0]
        if not group:
            return uid, uid
        gid = int(group) if group.isdigit() else userdb.resolve("0:" + group, passwd=passwd, group=groups)[1]
    except userdb.UserError as exc:
        raise InvalidParameter("unable to convert uid/gid chown string to host mapping: %s" % exc) from None
    return uid, gid


def parse_chmod(spec: str | None) -> int | None:
    if not spec:
        return None
    try:
        mode = int(spec, 8)
    except ValueError:
        raise InvalidParameter("invalid chmod parameter %r: only octal modes are supported" % spec) from None
    if not 0 <= mode <= 0o7777:
        raise InvalidParameter("invalid chmod parameter %r" % spec)
    return mode


# -- writing into the rootfs -----------------------------------------------------------------
class Writer:
    """Writes sources into one step's rootfs (`root`, the container's merged dir)."""

    def __init__(
        self,
        root: str,
        tmpdir: str,
        owner: tuple[int, int],
        chmod: int | None,
        shift: Callable[[int, int], tuple[int, int]] | None = None,
    ) -> None:
        """owner: the container's (uid, gid) of what is written; shift: to host ids (--userns-remap)."""
        self.root = root
        self.shift = shift
        owner = shift(*owner) if shift is not None else owner
        self.owner = owner
        self.chmod = chmod
        self.tmp = tempfile.mkdtemp(prefix="copy-", dir=tmpdir)

    def close(self) -> None:
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
        os.rmdir(self.tmp)

    def is_dir(self, path: str) -> bool:
        try:
            with tarsafe.Scope(self.root) as scope:
                fd, _ = scope.walk_dir([p for p in path.split("/") if p])
                os.close(fd)
            return True
        except OSError:
            return False

    def make_dir(self, path: str) -> None:
        """Create `path` (and missing parents, owned like the copied files) inside the rootfs."""
        uid, gid = self.owner

        def own(parent_fd, name):
            os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)

        with tarsafe.Scope(self.root) as scope:
            try:
                fd, _ = scope.walk_dir([p for p in path.split("/") if p], create=True, mkdir_hook=own)
            except NotADirectoryError:
                raise InvalidParameter("cannot copy to %s: a parent is not a directory" % path) from None
            os.close(fd)

    def _extract(self, tar_path, dest_dir, owner):
        with open(tar_path, "rb") as fh:
            tarsafe.safe_extract(fh, dest_dir, root=self.root, whiteouts="keep", owner=owner, shift=self.shift)

    def _mode(self, st):
        if self.chmod is not None:
            return self.chmod
        return stat.S_IMODE(st.st_mode)

    def _add(self, tar, arcname, path):
        st = os.lstat(path)
        if posixpath.basename(arcname).startswith(tarsafe.WHITEOUT_PREFIX):
            raise ContextError("cannot copy %r: names starting with .wh. are reserved for layer whiteouts" % arcname)
        ti = tarfile.TarInfo(arcname)
        ti.mode = self._mode(st)
        ti.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
        elif stat.S_ISLNK(st.st_mode):
            ti.type = tarfile.SYMTYPE
            ti.mode = 0o777
            ti.linkname = os.readlink(path)
            tar.addfile(ti)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                ti.size = os.fstat(fh.fileno()).st_size
                tar.addfile(ti, fh)
        # devices, fifos and sockets of a source are not copied (Docker refuses them from a context)

    def copy(self, path: str, dest_dir: str, name: str | None) -> None:
        """Copy host `path` (a source already resolved inside its root) into dest_dir.

        A directory's contents go into dest_dir; a file becomes dest_dir/name.
        """
        self.make_dir(dest_dir)
        tar_path = os.path.join(self.tmp, "src.tar")
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            if os.path.isdir(path) and not os.path.islink(path):
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames.sort()
                    for entry in sorted(dirnames + filenames):
                        full = os.path.join(dirpath, entry)
                        self._add(tar, os.path.relpath(full, path), full)
            else:
                self._add(tar, name or posixpath.basename(path), path)
        try:
            self._extract(tar_path, dest_dir, self.owner)
        finally:
            os.unlink(tar_path)

    def extract_archive(self, path: str, dest_dir: str, keep_owner: bool) -> None:
        """ADD of a local tar (plain, gzip, bzip2, xz): its contents go into dest_dir."""
        self.make_dir(dest_dir)
        self._extract(path, dest_dir, None if keep_owner else self.owner)


def is_archive(path: str) -> bool:
    """ADD extracts only what Docker would: a tar, plain or compressed (by content, not by name)."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    try:
        with tarfile.open(path, "r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False


# -- ADD <url> -------------------------------------------------------------------------------
def is_url(src: str) -> bool:
    return src.startswith("http://") or src.startswith("https://")


def download(url: str, workdir: str, progress: Callable[[str], None]) -> tuple[str, str, float | None]:
    """Fetch an ADD URL to a file under workdir; -> (path, file name, mtime from Last-Modified)."""
    name = posixpath.basename(urllib.parse.urlparse(url).path.rstrip("/")) or ""
    fd, path = tempfile.mkstemp(prefix="url-", dir=workdir)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "dockyard-builder"})
        with urllib.request.urlopen(req, timeout=URL_TIMEOUT) as resp, os.fdopen(fd, "wb") as out:  # noqa: S310
            while True:
                chunk = resp.read(COPY_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
            modified = resp.headers.get("Last-Modified")
    except (OSError, ValueError) as exc:
        os.unlink(path)
        raise InvalidParameter("failed to fetch %s: %s" % (url, exc)) from None
    mtime = None
    if modified:
        try:
            mtime = parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            mtime = None
    os.chmod(path, 0o600)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    progress("Downloading %s" % url)
    return path, name, mtime
