"""A container's changes (its overlay upper dir) as a layer tar, with overlay whiteouts made OCI ones.

Overlayfs records a deleted file as a 0/0 character device and a replaced directory as one with
the xattr trusted.overlay.opaque=y; a layer says the same with `.wh.NAME` and `.wh..wh..opq`.
The mount points the runtime makes for every container (/proc, /sys, /dev and the empty
/etc/hosts, /etc/hostname, /etc/resolv.conf) are not the step's changes and are left out, as
Docker leaves its init layer out. The upper dir is read after the container has exited, without
following any link in it.
"""

from __future__ import annotations

import os
import stat
import tarfile
from typing import BinaryIO, Callable

from dockyard.engine.errors import EngineError

Unshift = Callable[[int, int], "tuple[int, int]"]

OPAQUE_XATTR = "trusted.overlay.opaque"
_RUNTIME_DIRS = ("proc", "sys", "dev")
_RUNTIME_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")


def _is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path):
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _skip(rel, st, path):
    if rel in _RUNTIME_DIRS and stat.S_ISDIR(st.st_mode):
        try:
            return not os.listdir(path)
        except OSError:
            return True
    if rel == "etc" and stat.S_ISDIR(st.st_mode) and not _opaque(path):
        # /etc made or copied up only to hold the runtime's mount points: not the step's change.
        try:
            names = os.listdir(path)
        except OSError:
            return True
        return all(_skip("etc/" + name, os.lstat(os.path.join(path, name)), os.path.join(path, name)) for name in names)
    return rel in _RUNTIME_FILES and stat.S_ISREG(st.st_mode) and st.st_size == 0


def _info(name, st, unshift=None):
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = unshift(st.st_uid, st.st_gid) if unshift else (st.st_uid, st.st_gid)
    ti.mtime = int(st.st_mtime)
    ti.uname = ti.gname = ""
    return ti


def unshifter(shift: Callable[[int, int], "tuple[int, int]"]) -> Unshift:
    """The inverse of a user namespace shift for the ids of its first range; others become nobody.

    With --userns-remap an upper dir holds host ids; a layer holds the container's ids.
    """
    root_uid, root_gid = shift(0, 0)

    def back(uid: int, gid: int) -> "tuple[int, int]":
        cu, cg = uid - root_uid, gid - root_gid
        try:
            ok_u = cu >= 0 and shift(cu, 0)[0] == uid
        except EngineError:
            ok_u = False
        try:
            ok_g = cg >= 0 and shift(0, cg)[1] == gid
        except EngineError:
            ok_g = False
        return (cu if ok_u else 65534), (cg if ok_g else 65534)

    return back


def write_diff(upper: str, out: BinaryIO, unshift: Unshift | None = None) -> int:
    """Write the changes under `upper` to `out` as a tar; -> number of entries (0: no change).

    unshift: host (uid, gid) -> the container's, with user namespace remapping.
    """
    count = 0
    inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            dir_path = os.path.join(upper, rel_dir) if rel_dir else upper
            try:
                names = sorted(os.listdir(dir_path))
            except OSError:
                continue
            subdirs = []
            for name in names:
                rel = rel_dir + "/" + name if rel_dir else name
                path = os.path.join(dir_path, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if _skip(rel, st, path):
                    continue
                count += 1
                if _is_whiteout(st):
                    ti = _info((rel_dir + "/" if rel_dir else "") + ".wh." + name, st, unshift)
                    ti.mode = 0o600
                    tar.addfile(ti)
                    continue
                ti = _info(rel, st, unshift)
                if stat.S_ISDIR(st.st_mode):
                    ti.type = tarfile.DIRTYPE
                    tar.addfile(ti)
                    if _opaque(path):
                        tar.addfile(_info(rel + "/.wh..wh..opq", st, unshift))
                    subdirs.append(rel)
                elif stat.S_ISLNK(st.st_mode):
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = os.readlink(path)
                    tar.addfile(ti)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in inodes:
                        ti.type = tarfile.LNKTYPE
                        ti.linkname = inodes[key]
                        tar.addfile(ti)
                        continue
                    inodes[key] = rel
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                    with os.fdopen(fd, "rb") as fh:
                        ti.size = os.fstat(fh.fileno()).st_size
                        tar.addfile(ti, fh)
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                    ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    tar.addfile(ti)
                elif stat.S_ISFIFO(st.st_mode):
                    ti.type = tarfile.FIFOTYPE
                    tar.addfile(ti)
                # sockets are not part of an image (Docker drops them too)
            stack.extend(reversed(subdirs))
    return count
