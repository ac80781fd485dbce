"""Volume copy-up: a new, empty volume is filled with what the image has at the volume's path, as Docker does.

The image is hostile input, so the copy walks descriptors, never path strings: every entry is looked up
with O_NOFOLLOW relative to the directory already open, a symlink is copied as a symlink (its target is
never looked at), and nothing but a directory or a regular file is ever opened for reading. A regular
file is first opened O_PATH, checked with fstat, and only then reopened for its bytes, so an entry
swapped for a device in between is never opened.

What is copied, as Docker's copy-up (continuity fs.CopyDir) keeps it:
- directories, regular files (bytes, owner, mode with setuid/setgid bits, timestamps, xattrs except
  overlayfs' own trusted.overlay.*), symlinks (target, owner, timestamps; symlinks carry no xattrs here);
- device nodes, fifos and sockets are recreated as nodes (mknod with the same type, mode and rdev),
  never opened; the volume is mounted `nodev` into unprivileged containers, so a node only works in a
  privileged one, which could make it itself;
- hard links between regular files stay hard links inside the volume.
Entries are created with O_EXCL / mkdir, so something that appears in the destination meanwhile (a
container sharing the volume) is left alone, never written through.
"""

from __future__ import annotations

import os
import stat
from typing import Iterator

from dockyard.engine.errors import SystemFailure
from dockyard.engine.runtime.rootpath import O_PATH, open_in_root, proc_fd

MAX_DEPTH = 1000  # two descriptors per level are open at once
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NODES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
_SKIP_XATTR_PREFIX = "trusted.overlay."


def copy_up_volumes(mounts: list[dict], rootfs_path: str) -> bool:
    """Copy the image's content into each volume mount not copied up yet; -> whether a record changed.

    Docker copies only into an empty volume, once (CopiedUp), and not with nocopy.
    """
    changed = False
    for point in mounts:
        if point.get("Type") != "volume" or point.get("NoCopy") or point.get("CopiedUp"):
            continue
        point["CopiedUp"] = changed = True
        if point.get("Source"):
            try:
                copy_up(rootfs_path, point["Destination"], point["Source"])
            except OSError as exc:
                raise SystemFailure(
                    "copying the image's content at %s into volume %s: %s"
                    % (point["Destination"], point.get("Name") or point["Source"], exc.strerror or exc)
                ) from None
    return changed


def copy_up(rootfs_path: str, dest: str, volume_data: str) -> None:
    """Copy the directory at `dest` inside `rootfs_path` (resolved in that root) into `volume_data`, if empty."""
    root = os.open(rootfs_path, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            where = open_in_root(root, dest)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing in the image at that path
    finally:
        os.close(root)
    try:
        src = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=where)
    except NotADirectoryError:
        return  # a file at the volume's path: Docker copies directories only
    finally:
        os.close(where)
    try:
        dst = os.open(volume_data, _DIR)
        try:
            if os.listdir(dst):
                return
            _Copy(dst).tree(src)
            st = os.fstat(src)
            _set_meta(src, dst, st, times=False)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _set_meta(src_fd: int, dst_fd: int, st: os.stat_result, times: bool = True) -> None:
    """Owner, mode (after chown: chown clears setuid), xattrs, times, onto an open descriptor."""
    os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src_fd, dst_fd)
    if times:
        os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_xattrs(src_fd: int, dst_fd: int) -> None:
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return
    for name in names:
        if name.startswith(_SKIP_XATTR_PREFIX):
            continue
        try:
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
        except OSError:
            pass  # as Docker: xattrs the volume's filesystem cannot hold are dropped


class _Copy:
    """One copy-up: an explicit stack of (source dir fd, destination dir fd) pairs, no recursion."""

    def __init__(self, dst_root: int) -> None:
        self.dst_root = dst_root
        self.links: dict[tuple[int, int], tuple[tuple[str, ...], str]] = {}

    def tree(self, src_root: int) -> None:
        # (src fd, dst fd, names left, path from the volume root, the dir's stat to apply when done)
        stack: list[tuple[int, int, Iterator[str], tuple[str, ...], os.stat_result | None]] = [
            (src_root, self.dst_root, iter(sorted(os.listdir(src_root))), (), None)
        ]
        try:
            while stack:
                s, d, names, rel, st_dir = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if st_dir is not None:
                        _set_meta(s, d, st_dir)
                        os.close(s)
                        os.close(d)
                    continue
                try:
                    child = self.entry(s, d, name, rel)
                except (FileNotFoundError, FileExistsError):
                    continue  # vanished from the source, or appeared in the volume: leave it
                if child is not None:
                    if len(stack) > MAX_DEPTH:
                        os.close(child[0])
                        os.close(child[1])
                        raise OSError(0, "directories nested deeper than %d levels" % MAX_DEPTH)
                    cs, cd, st = child
                    stack.append((cs, cd, iter(sorted(os.listdir(cs))), rel + (name,), st))
        finally:
            for s, d, _, _, st_dir in stack:
                if st_dir is not None:
                    os.close(s)
                    os.close(d)

    def entry(self, s: int, d: int, name: str, rel: tuple[str, ...]):
        """Copy one entry; for a directory -> (src fd, dst fd, stat) to descend into, else None."""
        st = os.stat(name, dir_fd=s, follow_symlinks=False)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=d)  # opened up to its mode once its content is in
            cs = os.open(name, _DIR, dir_fd=s)  # O_DIRECTORY: a swapped-in device fails before it opens
            try:
                cd = os.open(name, _DIR, dir_fd=d)
            except BaseException:
                os.close(cs)
                raise
            return cs, cd, st
        if kind == stat.S_IFREG:
            self.file(s, d, name, st, rel)
        elif kind == stat.S_IFLNK:
            os.symlink(os.readlink(name, dir_fd=s), name, dir_fd=d)
            self.name_meta(d, name, st)
        elif kind in _NODES:
            os.mknod(name, kind | 0o600, st.st_rdev, dir_fd=d)
            self.name_meta(d, name, st)
        return None

    def file(self, s: int, d: int, name: str, st: os.stat_result, rel: tuple[str, ...]) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links and self.link(d, name, *self.links[key]):
            return
        probe = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=s)
        try:
            pst = os.fstat(probe)
            if not stat.S_ISREG(pst.st_mode) or (pst.st_dev, pst.st_ino) != key:
                return  # swapped since it was listed: not a regular file we may open
            src = os.open(proc_fd(probe), os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(probe)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d)
            try:
                _copy_bytes(src, dst)
                _set_meta(src, dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        if st.st_nlink > 1:
            self.links.setdefault(key, (rel, name))

    def link(self, d: int, name: str, rel: tuple[str, ...], first: str) -> bool:
        """Hard-link `name` in d to an earlier copy at rel/first (walked without following symlinks)."""
        parent = os.dup(self.dst_root)
        try:
            for part in rel:
                nxt = os.open(part, _DIR, dir_fd=parent)
                os.close(parent)
                parent = nxt
            os.link(first, name, src_dir_fd=parent, dst_dir_fd=d, follow_symlinks=False)
            return True
        except OSError:
            return False  # the earlier copy is gone: copy the bytes again
        finally:
            os.close(parent)

    @staticmethod
    def name_meta(d: int, name: str, st: os.stat_result) -> None:
        """Owner, mode and times of a symlink or node just made in d; none of these calls follows a link."""
        os.chown(name, st.st_uid, st.st_gid, dir_fd=d, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            probe = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            try:
                if stat.S_IFMT(os.fstat(probe).st_mode) == stat.S_IFMT(st.st_mode):
                    os.chmod(proc_fd(probe), stat.S_IMODE(st.st_mode))  # the node itself, never opened
            finally:
                os.close(probe)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=d, follow_symlinks=False)


def _copy_bytes(src: int, dst: int) -> None:
    while True:
        try:
            n = os.sendfile(dst, src, None, 1 << 24)
        except OSError:
            n = -1
        if n == 0:
            return
        if n < 0:
            break
    while True:  # sendfile refused (some filesystems): plain reads from where it stopped
        chunk = memoryview(os.read(src, 1 << 20))
        if not chunk:
            return
        while chunk:
            chunk = chunk[os.write(dst, chunk) :]
