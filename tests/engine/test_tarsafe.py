"""tarsafe.safe_extract: tar-slip attempts are refused with a 400 and nothing lands outside the destination."""

import gzip
import io
import os
import stat
import tarfile

import pytest

from dockyard.engine.api.errors import http_status
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images.tarsafe import Scope, UnsafeArchive, safe_extract, symlink_escapes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="extraction keeps owners and makes devices: root only")


def make_tar(*entries, fmt=tarfile.PAX_FORMAT):
    """entries: (name, kind, payload): kind file/dir/symlink/hardlink/chr/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                data = payload.encode() if isinstance(payload, str) else payload
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            if kind == "chr":
                info.devmajor, info.devminor = payload
            tar.addfile(info)
    buf.seek(0)
    return buf


def snapshot(path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def area(tmp_path):
    """(dest, outside): an empty destination and a populated sibling that must never change."""
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    (outside / "sub").mkdir()
    before = snapshot(tmp_path / "outside")
    yield dest, outside
    assert snapshot(outside) == before, "something was written outside the destination"


@pytest.mark.parametrize("name", ["/abs.txt", "../escape.txt", "a/../../escape.txt", "./../x", "a/b/../../../x"])
def test_absolute_and_dotdot_names_are_refused(area, name):
    dest, _ = area
    with pytest.raises(UnsafeArchive) as err:
        safe_extract(make_tar(("ok.txt", "file", "fine"), (name, "file", "bad")), str(dest))
    assert isinstance(err.value, InvalidParameter) and http_status(err.value) == 400
    assert not (dest.parent / "escape.txt").exists() and not (dest.parent / "x").exists()


@pytest.mark.parametrize("target", ["../outside", "../../..", "a/../../outside/secret", "x/../../"])
def test_relative_symlink_escaping_destination_is_refused(area, target):
    dest, _ = area
    with pytest.raises(UnsafeArchive, match="symlink"):
        safe_extract(make_tar(("evil", "symlink", target), ("evil/pwned", "file", "owned")), str(dest))
    assert not os.path.lexists(dest / "evil")


def test_write_through_absolute_symlink_stays_inside(area):
    """An absolute link means "/" of the destination (as in a container), never the host's root."""
    dest, outside = area
    safe_extract(
        make_tar(
            ("evil", "symlink", str(outside)), ("evil/pwned", "file", "owned"), ("evil/secret", "file", "replaced")
        ),
        str(dest),
    )
    assert os.readlink(dest / "evil") == str(outside)
    inside = dest / str(outside).lstrip("/")
    assert (inside / "pwned").read_text() == "owned"
    assert (inside / "secret").read_text() == "replaced"
    assert not (outside / "pwned").exists()


def test_preexisting_symlinks_in_destination_are_scoped(area):
    """Links planted in the destination (a container's rootfs) are followed inside it only."""
    dest, outside = area
    (dest / "planted").symlink_to(outside)  # absolute, to the host dir
    (dest / "up").symlink_to("../../../../..")  # climbs far above the destination
    safe_extract(
        make_tar(("planted/a", "file", "A"), ("up/b", "file", "B"), ("up/outside/secret", "file", "C")), str(dest)
    )
    assert (dest / str(outside).lstrip("/") / "a").read_text() == "A"
    assert (dest / "b").read_text() == "B"  # ".." stops at the destination's root
    assert (dest / "outside" / "secret").read_text() == "C"


@pytest.mark.parametrize("link", ["../outside/secret", "/etc/passwd"])
def test_hardlink_outside_is_refused(area, link):
    dest, outside = area
    with pytest.raises(UnsafeArchive):
        safe_extract(make_tar(("h", "hardlink", link)), str(dest))
    assert not os.path.lexists(dest / "h")
    assert os.stat(outside / "secret").st_nlink == 1


def test_hardlink_through_symlinked_parent_cannot_reach_host(area):
    dest, outside = area
    with pytest.raises(UnsafeArchive, match="not found"):
        safe_extract(
            make_tar(("root", "symlink", "/"), ("h", "hardlink", "root" + str(outside) + "/secret")), str(dest)
        )
    assert os.stat(outside / "secret").st_nlink == 1


def test_hardlink_inside_works(area):
    dest, _ = area
    safe_extract(make_tar(("a", "file", "data"), ("b", "hardlink", "a"), ("./c", "hardlink", "./a")), str(dest))
    assert os.stat(dest / "a").st_ino == os.stat(dest / "b").st_ino == os.stat(dest / "c").st_ino


def test_overlay_whiteouts_are_converted(area):
    dest, _ = area
    safe_extract(
        make_tar(
            ("d", "dir", None),
            ("d/.wh.gone", "file", ""),
            ("d/.wh..wh..opq", "file", ""),
            ("d/kept", "file", "k"),
            (".wh..wh.plnk", "dir", None),
        ),
        str(dest),
        whiteouts="overlay",
    )
    st = os.lstat(dest / "d" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"
    assert not os.path.lexists(dest / "d" / ".wh.gone")
    assert not os.path.lexists(dest / ".wh..wh.plnk")


def test_apply_whiteouts_delete(area):
    dest, _ = area
    (dest / "d").mkdir()
    (dest / "d" / "old").write_text("old")
    (dest / "e").mkdir()
    (dest / "e" / "victim").write_text("v")
    safe_extract(
        make_tar(("d/new", "file", "n"), ("d/.wh..wh..opq", "file", ""), ("e/.wh.victim", "file", "")),
        str(dest),
        whiteouts="apply",
    )
    assert sorted(os.listdir(dest / "d")) == ["new"]
    assert os.listdir(dest / "e") == []


def test_whiteout_names_are_plain_files_by_default(area):
    dest, _ = area
    safe_extract(make_tar((".wh.x", "file", "")), str(dest))
    assert (dest / ".wh.x").is_file()


def test_devices_need_permission(area):
    dest, _ = area
    with pytest.raises(UnsafeArchive, match="device"):
        safe_extract(make_tar(("null", "chr", (1, 3))), str(dest))
    safe_extract(make_tar(("null", "chr", (1, 3)), ("fifo", "fifo", None)), str(dest), allow_devices=True)
    assert os.lstat(dest / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)


def test_metadata_owner_and_gzip(area):
    dest, _ = area
    raw = make_tar(("dir", "dir", None), ("dir/f", "file", "x")).getvalue()
    # rewrite owner and a setuid mode through tarfile itself
    src = tarfile.open(fileobj=io.BytesIO(raw))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m in src.getmembers():
            m.uid, m.gid = 1234, 5678
            if m.isfile():
                m.mode = 0o4750
                out.addfile(m, src.extractfile(m))
            else:
                out.addfile(m)
    result = safe_extract(io.BytesIO(gzip.compress(buf.getvalue())), str(dest))
    st = os.stat(dest / "dir" / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
    assert result.entries == 2 and result.size == 1
    safe_extract(make_tar(("g", "file", "y")), str(dest), owner=(0, 0))
    assert os.stat(dest / "g").st_uid == 0


def test_replacing_and_no_overwrite_dir_nondir(area):
    dest, _ = area
    (dest / "d").mkdir()
    (dest / "f").write_text("file")
    with pytest.raises(UnsafeArchive, match="cannot overwrite directory"):
        safe_extract(make_tar(("d", "file", "x")), str(dest), no_overwrite_dir_nondir=True)
    with pytest.raises(UnsafeArchive, match="cannot overwrite non-directory"):
        safe_extract(make_tar(("f", "dir", None)), str(dest), no_overwrite_dir_nondir=True)
    safe_extract(make_tar(("d", "file", "x"), ("f", "dir", None)), str(dest))
    assert (dest / "d").read_text() == "x" and (dest / "f").is_dir()


def test_corrupt_archive_is_a_bad_request(area):
    dest, _ = area
    with pytest.raises(UnsafeArchive):
        safe_extract(io.BytesIO(b"this is not a tar archive" * 40), str(dest))
    truncated = make_tar(("f", "file", "x" * 5000)).getvalue()[:1500]
    with pytest.raises(UnsafeArchive):
        safe_extract(io.BytesIO(truncated), str(dest))


def test_root_scoped_destination(area):
    """With root=, dest is a path inside root; links on the way to dest are resolved inside root."""
    dest, outside = area
    (dest / "real").mkdir()
    (dest / "link").symlink_to("/real")
    safe_extract(make_tar(("x", "file", "1")), "/link", root=str(dest))
    assert (dest / "real" / "x").read_text() == "1"
    (dest / "hostlink").symlink_to(outside)  # absolute host path: inside root it does not exist
    with pytest.raises(UnsafeArchive, match="does not exist"):
        safe_extract(make_tar(("y", "file", "2")), "/hostlink", root=str(dest))


def test_scope_realpath_never_leaves_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "loop").symlink_to("../../../a/loop2")
    (tmp_path / "a" / "loop2").symlink_to("/a")
    with Scope(str(tmp_path)) as scope:
        assert scope.realpath("/a/loop") == "/a"
        assert scope.realpath("/../../etc") == "/etc"


def test_symlink_escapes_rule():
    assert symlink_escapes(["a"], "../x")
    assert not symlink_escapes(["a", "b"], "../x")
    assert not symlink_escapes(["a"], "/anything")
    assert symlink_escapes(["a", "b"], "c/../../../x")
