"""`docker cp`: HEAD/GET/PUT /containers/{id}/archive, with the X-Docker-Container-Path-Stat header.

Paths are resolved like moby does, inside the container: through /proc/<pid>/root for a running
container (its own mounts, volumes included); when stopped, through its overlay rootfs or, for a path
under a volume or bind mount, through that mount's source. Every lookup goes through tarsafe.Scope,
so symlinks inside the container can never lead to host files; uploads are extracted by
tarsafe.safe_extract.

With --userns-remap, a remapped container's files are shown with its own ids (host 100000 -> 0) and
uploads are owned by its root (or, with copyUIDGID, by the archive's ids shifted into the map; an id
outside the map refuses the upload before anything is written), as dockerd maps them. Unlike dockerd
20.10 (measured), which shows host ids out, archives out carry the container's ids, so that `cp -a` out
and back in round trips instead of naming ids outside the map.
"""

import base64
import errno
import json
import os
import stat
import tarfile

from dockyard.engine.api.responses import Response
from dockyard.engine.errors import Conflict, Forbidden, InvalidParameter, NotFound, SystemFailure
from dockyard.engine.images import tarsafe
from dockyard.engine.runtime import procident, userns
from dockyard.engine.timefmt import rfc3339nano

STAT_HEADER = "X-Docker-Container-Path-Stat"

# Go os.FileMode type bits (what the docker CLI decodes from the stat header).
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_NAMED_PIPE = 1 << 25
GO_MODE_SOCKET = 1 << 24
GO_MODE_SETUID = 1 << 23
GO_MODE_SETGID = 1 << 22
GO_MODE_CHAR_DEVICE = 1 << 21
GO_MODE_STICKY = 1 << 20


def register(router, engine):
    router.add("HEAD", "/containers/{name}/archive", stat_path)
    router.add("GET", "/containers/{name}/archive", get_archive)
    router.add("PUT", "/containers/{name}/archive", put_archive)


def go_file_mode(st_mode):
    """st_mode -> Go's os.FileMode bits."""
    mode = st_mode & 0o777
    if stat.S_ISDIR(st_mode):
        mode |= GO_MODE_DIR
    elif stat.S_ISLNK(st_mode):
        mode |= GO_MODE_SYMLINK
    elif stat.S_ISFIFO(st_mode):
        mode |= GO_MODE_NAMED_PIPE
    elif stat.S_ISSOCK(st_mode):
        mode |= GO_MODE_SOCKET
    elif stat.S_ISBLK(st_mode):
        mode |= GO_MODE_DEVICE
    elif stat.S_ISCHR(st_mode):
        mode |= GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE
    if st_mode & stat.S_ISUID:
        mode |= GO_MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= GO_MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= GO_MODE_STICKY
    return mode


class Where:
    """Where a container path is reached: `root` (a directory the scope is confined to), the path
    inside it, and the mount point it came through (None: the container's root filesystem)."""

    def __init__(self, root, inner, point=None):
        self.root = root
        self.inner = inner
        self.point = point


def container_root(req, ref):
    """(container, root path) of the container's filesystem as the engine can reach it."""
    ctr = req.engine.containers.get(ref)
    pid = ctr.pid or 0
    if pid and procident.is_running(pid, ctr.state.get("PidStartTime")):  # not a reused PID
        return ctr, "/proc/%d/root" % pid
    images = req.engine.images
    rootfs = ctr.rootfs
    if not images.rootfs.is_mounted(ctr.id):
        rootfs = images.rootfs.remount(ctr.id)
    if not rootfs or not os.path.isdir(rootfs):
        raise SystemFailure("container %s has no root filesystem" % ctr.id)
    return ctr, rootfs


def container_idmap(req, ctr):
    """The engine's IdMap when `ctr` runs in a remapped user namespace, else None."""
    idmap = getattr(req.engine.containers, "idmap", None)  # the images tests' stand-in has none
    if idmap is None or not userns.uses_userns(getattr(ctr, "host_config", None) or {}, idmap):
        return None
    return idmap


def locate(ctr, root, abs_path):
    """Where `abs_path` is for a container whose filesystem is at `root`.

    A running container's /proc/<pid>/root has its volumes and bind mounts in place. A stopped one's
    rootfs does not: a path under a volume or bind mount's destination is reached in the mount's
    source instead (as dockerd mounts them for the copy). The scope is then the source, so links in a
    volume resolve inside that volume and never leave it."""
    if root.startswith("/proc/"):
        return Where(root, abs_path)
    clean = abs_path.rstrip("/") or "/"
    if clean.endswith("/."):
        clean = clean[:-2] or "/"
    best = None
    for point in getattr(ctr, "mounts", None) or ():  # the images tests' stand-in has none
        dest = os.path.normpath(point.get("Destination") or "/")
        source = point.get("Source") or ""
        if dest == "/" or not source or point.get("Type") not in ("bind", "volume"):
            continue
        if (clean == dest or clean.startswith(dest + "/")) and (best is None or len(dest) > len(best[0])):
            best = (dest, point)
    if best is None:
        return Where(root, abs_path)
    dest, point = best
    source = os.path.normpath(point["Source"])
    rest = abs_path[len(dest) :]
    if not os.path.isdir(source):  # a file bind-mounted on its own: only that file is reachable
        if rest.strip("/"):
            raise NotFound("Could not find the file %s in container %s" % (abs_path, ctr.name or ctr.id))
        return Where(os.path.dirname(source), "/" + os.path.basename(source) + rest, point)
    return Where(source, rest if rest.startswith("/") else "/" + rest, point)


def _abs(path):
    """moby's PreserveTrailingDotOrSeparator(Join("/", path), path)."""
    if not path:
        raise InvalidParameter("path is required")
    clean = os.path.normpath("/" + path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if path.endswith("/.") and clean != "/":
        clean += "/."
    elif path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def _display_base(abs_path):
    stripped = abs_path.rstrip("/")
    if stripped.endswith("/."):
        stripped = stripped[:-2]
    return os.path.basename(stripped) or "/"


class _Target:
    """A resolved path inside the container: parent dir fd + name (None = the root)."""

    def __init__(self, scope, abs_path, follow_final, shown=None):
        self.scope = scope
        self.abs = abs_path
        self.shown = shown or abs_path  # the path as the container sees it
        self.prefix = ""  # the mount destination the scope's root is seen at (stopped containers)
        self.root = ""  # the directory the scope is confined to (a /proc/<pid>/root when running)
        self.pfd, self.name, self.parent_parts = scope.resolve(abs_path, follow_final=follow_final)

    def lstat(self):
        if self.name is None:
            return os.stat(".", dir_fd=self.pfd)
        return os.stat(self.name, dir_fd=self.pfd, follow_symlinks=False)

    def close(self):
        os.close(self.pfd)


def _stat_payload(scope, target, st):
    link_target = ""
    if stat.S_ISLNK(st.st_mode):
        link_target = scope.realpath(target.abs.rstrip("/"))
        if target.prefix:
            link_target = os.path.normpath(target.prefix + "/" + link_target)
    return {
        "name": _display_base(target.shown),
        "size": st.st_size,
        "mode": go_file_mode(st.st_mode),
        "mtime": rfc3339nano(st.st_mtime),
        "linkTarget": link_target,
    }


def _encode_stat(payload):
    return base64.b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")


def _not_found(path, ctr):
    return NotFound("Could not find the file %s in container %s" % (path, ctr.name or ctr.id))


def open_scope(ctr, root):
    """tarsafe.Scope on `root`; a running container's /proc/<pid>/root is confirmed, once open,
    to still be its init's: had the init exited and its PID been reused, this is a 409."""
    scope = tarsafe.Scope(root)
    if root.startswith("/proc/") and not procident.is_running(ctr.pid, ctr.state.get("PidStartTime")):
        scope.close()
        raise Conflict("container %s stopped during the copy" % ctr.id)
    return scope


def _open_target(req):
    path = req.query_value("path", "")
    ctr, root = container_root(req, req.params["name"])
    abs_path = _abs(path)
    where = locate(ctr, root, abs_path)
    scope = open_scope(ctr, where.root)
    follow = abs_path.endswith("/") or abs_path.endswith("/.")
    try:
        target = _Target(scope, where.inner, follow, abs_path)
        target.root = where.root
        if where.point is not None:
            target.prefix = os.path.normpath(where.point["Destination"])
        st = target.lstat()
    except (FileNotFoundError, NotADirectoryError):
        scope.close()
        raise _not_found(path, ctr) from None
    except OSError as exc:
        scope.close()
        if exc.errno == errno.ELOOP:
            raise InvalidParameter("too many levels of symbolic links: %s" % path) from None
        raise
    if follow and not stat.S_ISDIR(st.st_mode):  # "file/" is ENOTDIR for lstat too
        target.close()
        scope.close()
        raise InvalidParameter("%s: not a directory" % path)
    return ctr, scope, target, st


def stat_path(req):
    _, scope, target, st = _open_target(req)
    try:
        payload = _stat_payload(scope, target, st)
    finally:
        target.close()
        scope.close()
    return Response(200, b"", None, [(STAT_HEADER, _encode_stat(payload))])


class _ExactReader:
    """Gives exactly `size` bytes of a file that may change while being read (pads or cuts)."""

    def __init__(self, fh, size):
        self.fh = fh
        self.left = size

    def read(self, n=-1):
        if self.left <= 0:
            return b""
        if n is None or n < 0 or n > self.left:
            n = self.left
        data = self.fh.read(n)
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


def mounts_below(ctr, root, container_path):
    """{mount destination: source} of the volumes and bind mounts strictly below `container_path` of a
    stopped container (its rootfs at `root` lacks them: a copy of a directory holding them takes them
    from their sources, as dockerd mounts them for the copy); {} for a running one (/proc/<pid>/root
    has them in place)."""
    if root.startswith("/proc/"):
        return {}
    base = container_path.rstrip("/") + "/"
    out = {}
    for point in getattr(ctr, "mounts", None) or ():
        dest = os.path.normpath(point.get("Destination") or "/")
        source = point.get("Source") or ""
        if dest != "/" and source and point.get("Type") in ("bind", "volume") and dest.startswith(base):
            out[dest] = os.path.normpath(source)
    return out


def _container_path(abs_path):
    clean = abs_path.rstrip("/") or "/"
    if clean.endswith("/."):
        clean = clean[:-2] or "/"
    return clean


class _TarWriter:
    """Streams a subtree to a tarfile without following symlinks (fd-relative all the way); at a
    destination of `mounts` ({container path: source}) the mount's source is written instead.
    `ids` turns host (uid, gid) into the container's (user namespace remapping)."""

    def __init__(self, tar, mounts=None, ids=None):
        self.tar = tar
        self.inodes = {}
        self.mounts = dict(mounts or {})
        self.ids = ids

    def _info(self, name, st, link=""):
        info = tarfile.TarInfo(name)
        info.mode = st.st_mode & 0o7777
        info.uid, info.gid = self.ids(st.st_uid, st.st_gid) if self.ids else (st.st_uid, st.st_gid)
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, link
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:
            return None  # sockets cannot go in a tar
        return info

    def _add_mount(self, source, arcname, cpath):
        """The source of the mount at container path `cpath`: a directory's tree or a bound file."""
        try:
            st = os.stat(source)  # the operator's path: followed as the mount followed it
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                name = "."
            else:
                real = os.path.realpath(source)
                fd = os.open(os.path.dirname(real), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                name = os.path.basename(real)
        except OSError:
            return  # a bind source gone meanwhile: nothing to copy, as for a vanished file
        try:
            self.add(fd, name, arcname, os.stat(name, dir_fd=fd, follow_symlinks=False), cpath)
        except OSError:
            pass
        finally:
            os.close(fd)

    def add(self, dir_fd, name, arcname, st, cpath=None):
        """Write `name` (in dir_fd) as `arcname`; cpath is its path in the container (for the mounts)."""
        link = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else ""
        info = self._info(arcname + ("/" if stat.S_ISDIR(st.st_mode) else ""), st, link)
        if info is None:
            return
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, self.inodes[key], 0
                self.tar.addfile(info)
                return
            if st.st_nlink > 1:
                self.inodes[key] = arcname
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                return  # vanished or unreadable meanwhile: skip it like a changing tree
            with os.fdopen(fd, "rb") as fh:
                self.tar.addfile(info, _ExactReader(fh, st.st_size))
            return
        self.tar.addfile(info)
        if stat.S_ISDIR(st.st_mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:
                return
            try:
                entries = set(os.listdir(fd))
                prefix = (cpath.rstrip("/") + "/") if cpath else None
                if prefix:  # mount points the rootfs may not show (never created there)
                    entries |= {d[len(prefix) :] for d in self.mounts if os.path.dirname(d) + "/" == prefix}
                for entry in sorted(entries):
                    child = prefix + entry if prefix else None
                    if child in self.mounts:
                        self._add_mount(self.mounts[child], arcname + "/" + entry, child)
                        continue
                    try:
                        cst = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    self.add(fd, entry, arcname + "/" + entry, cst, child)
            finally:
                os.close(fd)


def get_archive(req):
    ctr, scope, target, st = _open_target(req)
    try:
        payload = _stat_payload(scope, target, st)
        stream = req.stream(200, "application/x-tar", [(STAT_HEADER, _encode_stat(payload))])
        if req.method == "HEAD":
            return None
        tar = tarfile.open(fileobj=stream, mode="w|", bufsize=256 << 10, format=tarfile.PAX_FORMAT)
        try:
            cpath = _container_path(target.shown)
            idmap = container_idmap(req, ctr)
            writer = _TarWriter(tar, mounts_below(ctr, target.root, cpath), idmap.container_ids if idmap else None)
            rebase = payload["name"]
            if target.name is None:
                # `/` itself: names "/", "/bin", ... as dockerd's (rebased to "/"), which the CLI turns into
                # DEST/bin for a new DEST (a "." would make it "DEST." instead)
                base = "" if target.shown == "/" else (rebase.strip("/") or ".")
                writer.add(target.pfd, ".", base, st, cpath)
            else:
                writer.add(target.pfd, target.name, rebase, st, cpath)
        finally:
            tar.close()
    finally:
        target.close()
        scope.close()
    return None


def put_archive(req):
    path = req.query_value("path", "")
    ctr, root = container_root(req, req.params["name"])
    abs_path = _abs(path)
    no_overwrite = req.query_bool("noOverwriteDirNonDir")
    copy_uidgid = req.query_bool("copyUIDGID")
    where = locate(ctr, root, abs_path)
    root = where.root
    if where.point is not None and not where.point.get("RW", True):
        raise Forbidden("mounted volume is marked read-only")
    with open_scope(ctr, root) as scope:
        try:
            real = scope.realpath(where.inner)
            fd, _ = scope.walk_dir([p for p in real.split("/") if p])
            os.close(fd)
        except FileNotFoundError:
            raise _not_found(path, ctr) from None
        except NotADirectoryError:
            raise InvalidParameter("extraction point is not a directory") from None
    idmap = container_idmap(req, ctr)
    if copy_uidgid:  # the archive's ids (shifted into a remapped container's range)
        owner, shift = None, idmap.shift if idmap else None
    else:  # the container's root
        owner, shift = idmap.root if idmap else (0, 0), None
    try:
        tarsafe.safe_extract(
            req.body,
            real,
            root=root,
            owner=owner,
            no_overwrite_dir_nondir=no_overwrite,
            allow_devices=False,
            shift=shift,
        )
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise Forbidden("container rootfs is marked read-only") from None
        raise
    return Response(200)
