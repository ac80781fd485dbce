"""Paths confined to a directory, resolved the way a chroot would see them: component by component
with openat(O_NOFOLLOW) from a directory fd, a symlink met on the way followed *inside* the root
(absolute targets restart at the root, `..` stops at it). Used for every write into, and lookup in,
a tree that an image or a container controls (tarsafe extraction, docker cp, build COPY)."""

from __future__ import annotations

import errno
import os
import stat

MAX_SYMLINK_HOPS = 40
O_PATH = getattr(os, "O_PATH", 0o10000000)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def close_fd(fd: int | None) -> None:
    """Close `fd` if it is one; errors are ignored (cleanup paths)."""
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def proc_fd_path(fd: int) -> str:
    """A path naming the open file `fd` (for calls that take a path, not an fd)."""
    return "/proc/self/fd/%d" % fd


class Scope:
    """A directory fd treated as '/': resolves paths below it without escaping it."""

    def __init__(self, root):
        self.root_fd = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self):
        close_fd(self.root_fd)
        self.root_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open_chain(self, names):
        fd = os.open(".", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            for name in names:
                nfd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            close_fd(fd)
            raise
        return fd

    def walk_dir(self, parts, create=False, mkdir_hook=None):
        """(fd, real_parts) of directory `parts`, following symlinks inside the scope.

        Missing components are created (mode 0755) when `create`, and passed to
        mkdir_hook(parent_fd, name). Raises FileNotFoundError / NotADirectoryError /
        OSError(ELOOP) like the kernel would.
        """
        pending = list(parts)
        real = []
        hops = 0
        fd = self._open_chain([])
        try:
            while pending:
                name = pending.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    if real:
                        real.pop()
                        close_fd(fd)
                        fd = -1
                        fd = self._open_chain(real)
                    continue
                try:
                    nfd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    if mkdir_hook is not None:
                        mkdir_hook(fd, name)
                    nfd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                st = os.fstat(nfd)
                if stat.S_ISDIR(st.st_mode):
                    close_fd(fd)
                    fd = nfd
                    real.append(name)
                    continue
                close_fd(nfd)
                if not stat.S_ISLNK(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", "/".join(real + [name]))
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", name)
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    real = []
                    close_fd(fd)
                    fd = -1
                    fd = self._open_chain([])
                pending = target.split("/") + pending
            return fd, real
        except BaseException:
            close_fd(fd)
            raise

    def resolve(self, path, follow_final=True):
        """Path inside the scope -> (parent_fd, final_name, real_parent_parts).

        final_name is None for the root itself. With follow_final, a symlink in
        the last component is followed too (the result names a non-symlink or a
        missing entry).
        """
        parts = [p for p in path.split("/") if p not in ("", ".")]
        hops = 0
        while True:
            if not parts:
                fd, real = self.walk_dir([])
                return fd, None, real
            fd, real = self.walk_dir(parts[:-1])
            name = parts[-1]
            if name == "..":
                close_fd(fd)
                fd, real = self.walk_dir(parts)
                if not real:
                    return fd, None, real
                close_fd(fd)
                parts = list(real)
                continue
            if not follow_final:
                return fd, name, real
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return fd, name, real
            if not stat.S_ISLNK(st.st_mode):
                return fd, name, real
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                close_fd(fd)
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(name, dir_fd=fd)
            close_fd(fd)
            parts = target.split("/") if target.startswith("/") else real + target.split("/")
            parts = [p for p in parts if p not in ("", ".")]

    def realpath(self, path):
        """The fully resolved path inside the scope, as '/a/b' (the entry may not exist)."""
        fd, name, real = self.resolve(path)
        close_fd(fd)
        return "/" + "/".join(real + ([name] if name else []))


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove `name` (file, link, device or whole tree) below dir_fd without following links."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        try:
            empty_dir(fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def empty_dir(fd: int, keep: tuple = ()) -> None:
    """Remove everything in the directory `fd` but the names in `keep`."""
    for name in os.listdir(fd):
        if name not in keep:
            remove_entry(fd, name)
