"""Extract untrusted tar archives without ever writing outside the destination (tar-slip safe).

Every path is resolved component by component with openat(O_NOFOLLOW) from a
directory fd, the way a chroot would see it: a symlink met on the way is
followed *inside* the scope root (absolute targets restart at the root, `..`
stops at the root), so neither a link from the archive nor one planted by a
container process can lead a write elsewhere. On top of that, like moby:
absolute member names, `..` components, relative symlinks that point above the
extraction directory and hard links to anything outside it are refused with
InvalidParameter (400) before anything is written for that member. The confined path
resolution itself (Scope) is scope.py's.

Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are kept as files, converted to the
overlayfs form (char device 0/0, xattr trusted.overlay.opaque=y), or applied
(deleted), depending on `whiteouts`. Of the archive's own xattrs only user.*,
security.capability and POSIX ACLs are set (see xattr_allowed).
"""

import errno
import os
import stat
import tarfile

from dockyard.engine.errors import InvalidParameter, SystemFailure
from dockyard.engine.images.scope import (
    DIR_FLAGS,
    O_PATH,
    Scope,
    close_fd,
    empty_dir,
    proc_fd_path,
    remove_entry,
)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_ARCHIVE_XATTRS = ("security.capability", "system.posix_acl_access", "system.posix_acl_default")


class UnsafeArchive(InvalidParameter):
    """The archive tries to write outside its destination, or is not a valid tar."""


def split_member_name(name, what="path"):
    """'./a//b/' -> ['a', 'b']; absolute names and `..` components are refused.

    An empty list means the extraction directory itself ('.' or './').
    """
    if name.startswith("/"):
        raise UnsafeArchive("invalid %s in archive: %r is absolute" % (what, name))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive("invalid %s in archive: %r contains '..'" % (what, name))
    return parts


def symlink_escapes(entry_parts, target):
    """True if a relative symlink at entry_parts points above the extraction directory.

    Absolute targets are resolved inside the scope root when followed, so they
    cannot escape; only `..` climbing above the directory counts (moby's rule).
    """
    if target.startswith("/"):
        return False
    depth = len(entry_parts) - 1
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


def xattr_allowed(name):
    """Extended attributes an archive may set: user.*, file capabilities and POSIX ACLs.

    trusted.* is refused (trusted.overlay.* is overlayfs's own metadata: opaque, redirect, metacopy,
    origin would change what the merged view shows; the engine sets opaque itself from whiteouts),
    and so are the other security.* labels (SELinux, IMA/EVM, SMACK) and any other namespace.
    security.capability is kept, as Docker keeps it: it only counts inside a container, within
    the container's bounding set.
    """
    return name.startswith("user.") or name in _ARCHIVE_XATTRS


class ExtractResult:
    """What was extracted: entry count and the total size of regular file contents."""

    def __init__(self):
        self.entries = 0
        self.size = 0


class _Extractor:
    def __init__(
        self, scope, dest_parts, whiteouts, allow_devices, owner, no_overwrite_dir_nondir, on_member, shift=None
    ):
        self.scope = scope
        self.shift = shift
        self.dest_parts = dest_parts
        self.whiteouts = whiteouts
        self.allow_devices = allow_devices
        self.owner = owner
        self.no_overwrite = no_overwrite_dir_nondir
        self.on_member = on_member
        self.dir_times = []  # (parts, mtime): applied last, children change a dir's mtime
        self.created = set()  # entry paths made by this archive ("apply" opaque dirs keep them)
        self.result = ExtractResult()
        self._cache_key = None
        self._cache_fd = None

    # -- parent directories --------------------------------------------------
    def _invalidate(self):
        close_fd(self._cache_fd)
        self._cache_key = self._cache_fd = None

    def _mkdir_hook(self, parent_fd, name):
        if self.owner is not None:
            os.chown(name, self.owner[0], self.owner[1], dir_fd=parent_fd, follow_symlinks=False)
        elif self.shift is not None:  # a parent the archive does not list belongs to the (remapped) root
            uid, gid = self.shift(0, 0)
            os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)

    def _ids(self, member):
        """The host owner of an entry: forced, the archive's ids, or those shifted into the remapped range."""
        if self.owner is not None:
            return self.owner
        if self.shift is not None:
            return self.shift(member.uid, member.gid)
        return member.uid, member.gid

    def parent_fd(self, parts):
        """fd of the directory holding entry `parts` (created if missing); cached, not to be closed."""
        key = tuple(parts[:-1])
        if key == self._cache_key:
            return self._cache_fd
        self._invalidate()
        try:
            fd, _ = self.scope.walk_dir(self.dest_parts + list(key), create=True, mkdir_hook=self._mkdir_hook)
        except NotADirectoryError:
            raise UnsafeArchive("cannot extract %r: a parent is not a directory" % "/".join(parts))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeArchive("cannot extract %r: too many symlinks" % "/".join(parts))
            raise
        self._cache_key, self._cache_fd = key, fd
        return fd

    # -- one member --------------------------------------------------------------
    def extract(self, tar, member):
        parts = split_member_name(member.name)
        kind = "dir" if member.isdir() else "other"
        if member.islnk():
            link_parts = split_member_name(member.linkname, "hard link target")
            if not link_parts:
                raise UnsafeArchive("invalid hard link %r -> %r" % (member.name, member.linkname))
        if member.issym() and symlink_escapes(parts, member.linkname):
            raise UnsafeArchive(
                "invalid symlink %r -> %r: points outside the destination" % (member.name, member.linkname)
            )
        if (member.ischr() or member.isblk()) and not self.allow_devices:
            raise UnsafeArchive("device file %r not allowed here" % member.name)
        if not (
            member.isreg()
            or member.isdir()
            or member.issym()
            or member.islnk()
            or member.ischr()
            or member.isblk()
            or member.isfifo()
        ):
            raise UnsafeArchive("unsupported tar entry type %r for %r" % (member.type, member.name))

        base = parts[-1] if parts else None
        if base is not None and self.whiteouts != "keep" and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, base)
            self.result.entries += 1
            if self.on_member:
                self.on_member(member, parts, "whiteout")
            return

        if not parts:  # the extraction directory itself: only its metadata
            fd, _ = self.scope.walk_dir(self.dest_parts)
            try:
                self._set_dir_meta_path(fd, None, member, [])
            finally:
                os.close(fd)
            if self.on_member:
                self.on_member(member, parts, "root")
            return

        pfd = self.parent_fd(parts)
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            is_dir = stat.S_ISDIR(st.st_mode)
            if self.no_overwrite and is_dir and kind != "dir":
                raise UnsafeArchive(
                    "cannot overwrite directory %r with non-directory" % ("/" + "/".join(self.dest_parts + parts))
                )
            if self.no_overwrite and not is_dir and kind == "dir":
                raise UnsafeArchive(
                    "cannot overwrite non-directory %r with directory" % ("/" + "/".join(self.dest_parts + parts))
                )
            if not (is_dir and kind == "dir"):
                remove_entry(pfd, name)
                if is_dir:
                    self._invalidate()
                    pfd = self.parent_fd(parts)

        uid, gid = self._ids(member)
        if member.isdir():
            if st is None or not stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=pfd)
            self._set_dir_meta_path(pfd, name, member, parts)
        elif member.isreg():
            self._write_file(tar, member, pfd, name, uid, gid)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=pfd)
            self._invalidate()  # a cached parent may now be reached through a link
            pfd = self.parent_fd(parts)
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            self._utime(pfd, name, member.mtime)
        elif member.islnk():
            self._hardlink(link_parts, pfd, name, member)
        else:
            if member.ischr():
                mode = stat.S_IFCHR
            elif member.isblk():
                mode = stat.S_IFBLK
            else:
                mode = stat.S_IFIFO
            os.mknod(name, mode | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
            self._set_node_meta(pfd, name, member, uid, gid)
        self.created.add(tuple(parts))
        self.result.entries += 1
        if self.on_member:
            self.on_member(member, parts, "entry")

    def _write_file(self, tar, member, pfd, name, uid, gid):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(member)
            written = 0
            if src is not None:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    _write_all(fd, chunk)
                    written += len(chunk)
            if written != member.size:
                raise UnsafeArchive("unexpected end of archive in %r" % member.name)
            self.result.size += written
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._xattrs(fd, member)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _hardlink(self, link_parts, pfd, name, member):
        try:
            tfd, _ = self.scope.walk_dir(self.dest_parts + link_parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            raise UnsafeArchive("hard link target %r not found" % member.linkname)
        try:
            os.link(link_parts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive("hard link target %r not found" % member.linkname)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EISDIR):
                raise UnsafeArchive("cannot hard link %r to %r: %s" % (member.name, member.linkname, exc.strerror))
            raise
        finally:
            os.close(tfd)

    # -- metadata ----------------------------------------------------------------
    def _xattrs(self, fd_or_path, member):
        for key, value in (member.pax_headers or {}).items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr.") :]
            if not xattr_allowed(attr):
                continue
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            try:
                os.setxattr(fd_or_path, attr, raw)
            except OSError as exc:
                # Like moby: xattrs the filesystem can't hold (or we may not set) are skipped.
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EINVAL, errno.ENODATA):
                    raise

    def _utime(self, pfd, name, mtime):
        try:
            os.utime(name, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
        except OSError:
            pass

    def _set_node_meta(self, pfd, name, member, uid, gid):
        fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            path = proc_fd_path(fd)
            os.chown(path, uid, gid)
            os.chmod(path, member.mode & 0o7777)
            self._xattrs(path, member)
        finally:
            os.close(fd)
        self._utime(pfd, name, member.mtime)

    def _set_dir_meta_path(self, pfd, name, member, parts):
        if name is None:
            fd = os.open(".", DIR_FLAGS, dir_fd=pfd)
        else:
            fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
        try:
            uid, gid = self._ids(member)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._xattrs(fd, member)
        finally:
            os.close(fd)
        self.dir_times.append((list(parts), member.mtime))

    def finish(self):
        self._invalidate()
        for parts, mtime in reversed(self.dir_times):
            try:
                fd, _ = self.scope.walk_dir(self.dest_parts + parts)
            except OSError:
                continue
            try:
                os.utime(proc_fd_path(fd), (mtime, mtime))
            except OSError:
                pass
            finally:
                os.close(fd)

    # -- whiteouts -----------------------------------------------------------------
    def _whiteout(self, parts, base):
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX) and base != WHITEOUT_OPAQUE:
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to do
        pfd = self.parent_fd(parts)
        if base == WHITEOUT_OPAQUE:
            if self.whiteouts == "overlay":
                fd = os.open(".", DIR_FLAGS, dir_fd=pfd)
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
            else:  # apply: everything not from this archive disappears from the directory
                keep = {p[-1] for p in self.created if tuple(p[:-1]) == tuple(parts[:-1])}
                fd = os.open(".", DIR_FLAGS, dir_fd=pfd)
                try:
                    empty_dir(fd, keep)
                finally:
                    os.close(fd)
                self._invalidate()
            return
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeArchive("invalid whiteout %r" % "/".join(parts))
        remove_entry(pfd, target)
        self._invalidate()
        if self.whiteouts == "overlay":
            pfd = self.parent_fd(parts)
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
            self.created.add(tuple(parts[:-1] + [target]))


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def safe_extract(
    source,
    dest,
    *,
    root=None,
    whiteouts="keep",
    allow_devices=False,
    owner=None,
    no_overwrite_dir_nondir=False,
    on_member=None,
    shift=None,
):
    """Extract a tar into `dest`; returns ExtractResult(entries, size).

    source: a TarFile, or a binary file object (read as a stream; gzip, bzip2 and
      xz are detected).
    dest: without `root`, a host directory that becomes the scope root. With
      `root` (e.g. '/proc/PID/root' or a container's merged rootfs), a path inside
      that root, resolved like the container would (symlinks stay inside root);
      it must be an existing directory.
    whiteouts: "keep" (plain files), "overlay" (convert for overlayfs) or "apply" (delete).
    owner: None keeps the archive's numeric uid/gid; (uid, gid) forces them.
    shift: with owner None, a function (uid, gid) -> (host uid, host gid) applied to every entry's owner
      (user namespace remapping); it raises for ids outside the range, which fails the extraction.
    on_member(tarinfo, parts, what): called after each member (layers use it).
    Raises UnsafeArchive (400) for unsafe or corrupt archives; nothing is written
    outside the destination before or after the error.
    """
    if whiteouts not in ("keep", "overlay", "apply"):
        raise ValueError("whiteouts must be keep, overlay or apply")
    scope = Scope(dest if root is None else root)
    try:
        if root is None:
            dest_parts = []
        else:
            try:
                fd, dest_parts = scope.walk_dir([p for p in dest.split("/") if p])
            except FileNotFoundError:
                raise UnsafeArchive("destination %r does not exist" % dest) from None
            except NotADirectoryError:
                raise UnsafeArchive("extraction point is not a directory") from None
            os.close(fd)
        ex = _Extractor(scope, dest_parts, whiteouts, allow_devices, owner, no_overwrite_dir_nondir, on_member, shift)
        own_tar = not isinstance(source, tarfile.TarFile)
        try:
            tar = tarfile.open(fileobj=source, mode="r|*") if own_tar else source
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UnsafeArchive("invalid tar archive: %s" % exc) from None
        try:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                    raise UnsafeArchive("invalid tar archive: %s" % exc) from None
                if member is None:
                    break
                try:
                    ex.extract(tar, member)
                except (tarfile.TarError, EOFError) as exc:
                    raise UnsafeArchive("invalid tar archive: %s" % exc) from None
                except OSError as exc:
                    if exc.errno in (errno.EROFS,):
                        raise
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                        raise SystemFailure("extracting %s: %s" % (member.name, exc.strerror))
                    raise UnsafeArchive("cannot extract %r: %s" % (member.name, exc.strerror or exc))
            ex.finish()
        finally:
            ex._invalidate()
            if own_tar:
                tar.close()
        return ex.result
    finally:
        scope.close()
