"""User namespace remapping (`--userns-remap`): root in a container is an unprivileged uid on the host.

As dockerd: `default` means the user `dockyard-remap` (created, with 65536 subordinate ids in /etc/subuid
and /etc/subgid, if missing); `USER[:GROUP]` or `UID[:GID]` name an existing entry of those files. The
container's ids 0..N-1 map onto the user's subordinate ranges, in file order. With remapping on the engine
keeps its data under <data-root>/<uid>.<gid>/, extracts image layers with owners shifted into the range,
and starts each container in a new user namespace whose maps the supervisor writes from outside.
"""

from __future__ import annotations

import grp
import os
import pwd

from dockyard.engine.atomicfile import atomic_write
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.runtime import rootpath

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Any

DEFAULT_USER = "dockyard-remap"
RANGE_SIZE = 65536
FIRST_ID = 100000  # where shadow-utils starts the first subordinate range
OVERFLOW_ID = 65534  # what the kernel shows for a host id the user namespace does not map
SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"

PRIVILEGED_REFUSED = (
    "privileged mode is incompatible with user namespaces.  You must run the container in the host "
    "namespace when running privileged mode"
)


class RemapError(Exception):
    """--userns-remap cannot be set up; the daemon refuses to start with this message."""


class IdMap:
    """The container's ids -> host ids: a list of (container_first, host_first, count) per kind."""

    def __init__(self, uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]]) -> None:
        self.uids = uids
        self.gids = gids

    @staticmethod
    def from_ranges(uid_ranges: list[tuple[int, int]], gid_ranges: list[tuple[int, int]]) -> "IdMap":
        """Subordinate (host_first, count) ranges, in file order, become container ids 0, 1, ..."""

        def stack(ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
            out, next_id = [], 0
            for host_first, count in ranges:
                out.append((next_id, host_first, count))
                next_id += count
            return out

        return IdMap(stack(uid_ranges), stack(gid_ranges))

    @staticmethod
    def _to_host(table: list[tuple[int, int, int]], cid: int, what: str) -> int:
        for first, host_first, count in table:
            if first <= cid < first + count:
                return host_first + (cid - first)
        raise InvalidParameter(
            "Container ID %d cannot be mapped to a host ID" % cid
            if what == "uid"
            else "Container GID %d cannot be mapped to a host GID" % cid
        )

    def host_uid(self, cid: int) -> int:
        return self._to_host(self.uids, cid, "uid")

    def host_gid(self, cid: int) -> int:
        return self._to_host(self.gids, cid, "gid")

    def shift(self, uid: int, gid: int) -> tuple[int, int]:
        """(container uid, gid) -> (host uid, gid); InvalidParameter for ids outside the range."""
        return self.host_uid(uid), self.host_gid(gid)

    @staticmethod
    def _to_container(table: list[tuple[int, int, int]], hid: int) -> int:
        for first, host_first, count in table:
            if host_first <= hid < host_first + count:
                return first + (hid - host_first)
        return OVERFLOW_ID

    def container_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """(host uid, gid) -> the ids the container sees; a host id outside the maps shows as the kernel's
        overflow id (65534, nobody), as it does inside the user namespace."""
        return self._to_container(self.uids, uid), self._to_container(self.gids, gid)

    @property
    def root(self) -> tuple[int, int]:
        """The host uid and gid of the container's root."""
        return self.host_uid(0), self.host_gid(0)

    def to_dict(self) -> dict[str, Any]:
        return {"uids": [list(r) for r in self.uids], "gids": [list(r) for r in self.gids]}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> "IdMap":
        return IdMap([tuple(r) for r in raw["uids"]], [tuple(r) for r in raw["gids"]])  # type: ignore[misc]


def map_text(table: list[tuple[int, int, int]]) -> bytes:
    """/proc/<pid>/uid_map content (one write: the kernel takes a map once)."""
    return "".join("%d %d %d\n" % tuple(r) for r in table).encode()


def write_maps(pid: int, idmap: dict[str, Any]) -> None:
    """Write the uid and gid maps of the user namespace `pid` is in (run by the supervisor, host root)."""
    for name, key in (("uid_map", "uids"), ("gid_map", "gids")):
        fd = os.open("/proc/%d/%s" % (pid, name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, map_text([tuple(r) for r in idmap[key]]))  # type: ignore[misc]
        finally:
            os.close(fd)


def become_root() -> None:
    """In a freshly mapped user namespace: become its root (host: the remapped uid), no extra groups.

    Until this the process keeps the host's uid 0 for path lookups, which is how the engine's own
    paths (0700 root) are opened before the container's mounts are made from the descriptors."""
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


# -- the daemon's setting ----------------------------------------------------------------------------
def _read_ranges(path: str) -> list[tuple[str, int, int]]:
    out = []
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or line.lstrip().startswith("#"):
            continue
        try:
            out.append((fields[0], int(fields[1]), int(fields[2])))
        except ValueError:
            continue
    return out


def _ranges_for(path: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    return [(first, count) for who, first, count in _read_ranges(path) if who in names and count > 0]


def _add_range(path: str, name: str) -> None:
    """Append `name:<first>:65536` above every range in the file (created 0644 if missing)."""
    entries = _read_ranges(path)
    first = max([FIRST_ID] + [start + count for _, start, count in entries])
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except FileNotFoundError:
        text = b""
    if text and not text.endswith(b"\n"):
        text += b"\n"
    atomic_write(path, text + ("%s:%d:%d\n" % (name, first, RANGE_SIZE)).encode(), durable=True, mode=0o644)


def _ensure_default_user() -> None:
    import subprocess  # here: the fork server imports this module and never runs useradd

    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false", DEFAULT_USER],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise RemapError(
                "cannot create the user %s for --userns-remap=default: %s"
                % (DEFAULT_USER, detail.decode(errors="replace").strip() or exc)
            ) from None
    for path in (SUBUID, SUBGID):
        if not _ranges_for(path, (DEFAULT_USER,)):
            _add_range(path, DEFAULT_USER)


def _lookup(value: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """-> (names the user has in /etc/subuid, names the group has in /etc/subgid, label)."""
    user, _, group = value.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise RemapError("--userns-remap: user %s does not exist" % user) from None
    gnames: tuple[str, ...]
    if group:
        try:
            gr = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            raise RemapError("--userns-remap: group %s does not exist" % group) from None
        gnames = (gr.gr_name, str(gr.gr_gid))
    else:
        gnames = (pw.pw_name, str(pw.pw_uid))  # as dockerd: the group named like the user
        try:
            gr = grp.getgrgid(pw.pw_gid)
            gnames += (gr.gr_name, str(gr.gr_gid))
        except KeyError:
            pass
    return (pw.pw_name, str(pw.pw_uid)), gnames, pw.pw_name


def load(value: str) -> IdMap:
    """The engine's id map for --userns-remap=value (creating dockyard-remap and its ranges for `default`)."""
    reason = unsupported_reason()
    if reason:
        raise RemapError("--userns-remap: %s" % reason)
    if value == "default":
        _ensure_default_user()
        value = DEFAULT_USER
    unames, gnames, label = _lookup(value)
    uids = _ranges_for(SUBUID, unames)
    gids = _ranges_for(SUBGID, gnames)
    if not uids:
        raise RemapError("--userns-remap: no subuid ranges found for user %s in %s" % (label, SUBUID))
    if not gids:
        raise RemapError("--userns-remap: no subgid ranges found for group %s in %s" % (gnames[0], SUBGID))
    return IdMap.from_ranges(uids, gids)


def unsupported_reason() -> str | None:
    """Why this host cannot run remapped containers, or None."""
    if not os.path.exists("/proc/self/ns/user"):
        return "the kernel has no user namespaces"
    try:
        with open("/proc/sys/user/max_user_namespaces") as fh:
            if int(fh.read().strip() or "0") == 0:
                return "user namespaces are disabled (user.max_user_namespaces = 0)"
    except (OSError, ValueError):
        pass
    if not rootpath.has_new_mount_api():
        return "the kernel lacks open_tree/move_mount/mount_setattr (Linux >= 5.12)"
    return None


def data_root(base: str, idmap: IdMap) -> str:
    """<data-root>/<uid>.<gid>, made 0700 root:root. Unlike dockerd it needs no group access for the
    remapped root: every engine path a container needs is opened before the init becomes that root."""
    uid, gid = idmap.root
    path = os.path.join(base, "%d.%d" % (uid, gid))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RemapError("cannot create %s: %s" % (path, exc.strerror)) from None
    os.chmod(path, 0o700)
    return path


def check_container(host_config: dict[str, Any], remapped: bool) -> None:
    """Docker's rules for a container on a remapping engine (InvalidParameter: a 400)."""
    if not remapped or host_config.get("UsernsMode") == "host":
        return
    if host_config.get("Privileged"):
        raise InvalidParameter(PRIVILEGED_REFUSED)
    for key, flag in (("PidMode", "--pid"), ("IpcMode", "--ipc"), ("UTSMode", "--uts"), ("NetworkMode", "--network")):
        if host_config.get(key) == "host":
            raise InvalidParameter(
                "%s=host is incompatible with user namespaces here: add --userns=host to run it without one" % flag
            )


def uses_userns(host_config: dict[str, Any], idmap: IdMap | None) -> bool:
    return idmap is not None and host_config.get("UsernsMode") != "host"
