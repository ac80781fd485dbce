"""`docker cp` and /info on an engine with --userns-remap: owners are mapped both ways, as dockerd does.

A real engine started with `--userns-remap default` (see test_userns.py), the real docker CLI and docker-py.
Into a remapped container, files belong to its root (host: the first subordinate id), with `-a` to the
archive's ids shifted into the map; an archive naming ids outside the map is refused before anything is
written. Out of it, the archive shows the container's ids (host 100000 -> 0).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from dockyard.engine.api import system
from dockyard.engine.runtime import userns
from tests.engine.runtime_helper import remapping_engine

N = ("--network", "none")
remap_ok = pytest.mark.skipif(
    os.geteuid() != 0 or userns.unsupported_reason() is not None or shutil.which("useradd") is None,
    reason=str(userns.unsupported_reason() or "needs root and useradd"),
)


def test_host_ids_show_as_the_containers_and_unmapped_ones_as_overflow():
    m = userns.IdMap.from_ranges([(100000, 65536), (300000, 10)], [(200000, 65536)])
    assert m.container_ids(100000, 200000) == (0, 0)
    assert m.container_ids(101000, 200050) == (1000, 50)
    assert m.container_ids(300003, 200000) == (65539, 0)  # the second range continues the container's ids
    assert m.container_ids(0, 0) == (65534, 65534)  # host root is nobody inside, as the kernel shows it
    assert m.container_ids(165536, 265536) == (65534, 65534)


def test_info_names_userns_only_when_remapping():
    assert "name=userns" in system.security_options(True)
    assert "name=userns" not in system.security_options(False)


@pytest.fixture(scope="module")
def eng():
    with remapping_engine() as e:
        yield e


@pytest.fixture(scope="module")
def remap(eng):
    """(host uid, host gid) of the containers' root."""
    return userns.load("default").root


def _owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _tar(entries):
    """A tar of (name, uid, gid) regular files and directories (names ending in /)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, uid, gid in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.uid, info.gid = uid, gid
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                info.size, info.mode = 1, 0o644
                t.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def _cp_out(eng, src):
    """{name: (uid, gid)} of the tar `docker cp CTR:SRC -` writes."""
    p = subprocess.run(["docker", "cp", src, "-"], capture_output=True, env=eng.env(), timeout=60, check=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        return {m.name.rstrip("/"): (m.uid, m.gid) for m in t.getmembers()}


def _cp_in(eng, tar_bytes, dest, *flags):
    return subprocess.run(
        ["docker", "cp", *flags, "-", dest], input=tar_bytes, capture_output=True, env=eng.env(), timeout=60
    )


@remap_ok
def test_info_says_userns(eng):
    assert "name=userns" in eng.client().info()["SecurityOptions"]


@remap_ok
def test_cp_into_a_running_container_gives_its_root_or_the_shifted_archive_ids(eng, remap, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x")
    os.chown(src / "d", 1234, 1234)
    os.chown(src / "d" / "f", 1000, 1001)
    cid = eng.docker("run", "-d", *N, "busybox", "sleep", "120").stdout.strip()
    try:
        pid = int(eng.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        root = Path("/proc/%d/root" % pid)
        eng.docker("cp", str(src / "d"), cid + ":/plain")
        assert eng.docker("exec", cid, "stat", "-c", "%u:%g", "/plain", "/plain/f").stdout.split() == ["0:0"] * 2
        assert _owner(root / "plain") == remap and _owner(root / "plain" / "f") == remap
        eng.docker("cp", "-a", str(src / "d"), cid + ":/kept")
        inside = eng.docker("exec", cid, "stat", "-c", "%u:%g", "/kept", "/kept/f").stdout.split()
        assert inside == ["1234:1234", "1000:1001"]
        assert _owner(root / "kept") == (remap[0] + 1234, remap[1] + 1234)
        assert _owner(root / "kept" / "f") == (remap[0] + 1000, remap[1] + 1001)
        # an archive of root's files: the container's root, never the host's
        out = _cp_in(eng, _tar([("r/", 0, 0), ("r/f", 0, 0)]), cid + ":/", "-a")
        assert out.returncode == 0, out.stderr
        assert _owner(root / "r") == remap and _owner(root / "r" / "f") == remap
    finally:
        eng.docker("rm", "-f", cid)


@remap_ok
def test_ids_outside_the_map_are_refused_and_nothing_is_written(eng, remap):
    cid = eng.docker("run", "-d", *N, "busybox", "sleep", "120").stdout.strip()
    try:
        pid = int(eng.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        root = Path("/proc/%d/root" % pid)
        for entries in ([("big", 70000, 0)], [("bigg", 0, 4000000)], [("dir/", 65536, 0), ("dir/f", 0, 0)]):
            out = _cp_in(eng, _tar(entries), cid + ":/tmp", "-a")
            assert out.returncode != 0 and b"cannot be mapped to a host" in out.stderr
            assert not (root / "tmp" / entries[0][0].rstrip("/")).exists()
        # without -a the archive's ids do not matter: the container's root owns what is written
        out = _cp_in(eng, _tar([("big", 70000, 4000000)]), cid + ":/tmp")
        assert out.returncode == 0, out.stderr
        assert _owner(root / "tmp" / "big") == remap
        # docker-py's put_archive (no copyUIDGID) likewise
        assert eng.client().containers.get(cid).put_archive("/tmp", _tar([("py", 0, 0), ("py2", 99999, 1)]))
        assert _owner(root / "tmp" / "py") == remap and _owner(root / "tmp" / "py2") == remap
        host_root_owned = [p for p in (root / "tmp").iterdir() if os.lstat(p).st_uid < remap[0]]
        assert host_root_owned == []
    finally:
        eng.docker("rm", "-f", cid)


@remap_ok
def test_cp_into_a_stopped_container_and_its_volume(eng, remap):
    cid = eng.docker("create", *N, "-v", "cpvol:/vol", "busybox", "sleep", "120").stdout.strip()
    try:
        assert _cp_in(eng, _tar([("a", 0, 0), ("b", 7, 8)]), cid + ":/", "-a").returncode == 0
        assert _cp_in(eng, _tar([("v", 5, 5)]), cid + ":/vol", "-a").returncode == 0
        assert _cp_in(eng, _tar([("w", 5, 5)]), cid + ":/vol").returncode == 0
        data = Path(eng.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "cpvol").stdout.strip())
        assert _owner(data / "v") == (remap[0] + 5, remap[1] + 5) and _owner(data / "w") == remap
        # the stopped container's view out: its own ids
        assert _cp_out(eng, cid + ":/b") == {"b": (7, 8)}
        assert _cp_out(eng, cid + ":/vol") == {"vol": (0, 0), "vol/v": (5, 5), "vol/w": (0, 0)}
        eng.docker("start", cid)
        out = eng.docker("exec", cid, "stat", "-c", "%u:%g", "/a", "/b", "/vol/v", "/vol/w").stdout.split()
        assert out == ["0:0", "7:8", "5:5", "0:0"]
    finally:
        eng.docker("rm", "-f", cid)
        eng.docker("volume", "rm", "cpvol", check=False)


@remap_ok
def test_cp_out_shows_the_containers_ids(eng, remap, tmp_path):
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "hostroot").write_text("x")  # host root's: unmapped in the container, nobody there
    cid = eng.docker("run", "-d", *N, "-v", "%s:/b" % bind, "busybox", "sleep", "120").stdout.strip()
    try:
        eng.docker("exec", cid, "sh", "-c", "mkdir /o && touch /o/r /o/u && chown 1000:1001 /o/u")
        assert _cp_out(eng, cid + ":/o") == {"o": (0, 0), "o/r": (0, 0), "o/u": (1000, 1001)}
        assert _cp_out(eng, cid + ":/b/hostroot") == {"hostroot": (65534, 65534)}
        inside = eng.docker("exec", cid, "stat", "-c", "%u:%g", "/b/hostroot").stdout.strip()
        assert inside == "65534:65534"  # what the archive says is what the container sees
        # docker-py's get_archive, and the stat header
        chunks, stat = eng.client().containers.get(cid).get_archive("/o/u")
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as t:
            assert [(m.name, m.uid, m.gid) for m in t.getmembers()] == [("u", 1000, 1001)]
        assert stat["name"] == "u" and stat["size"] == 0
        # out and back in with -a: the host file's ids become the container's same ids
        dest = tmp_path / "u"
        eng.docker("cp", "-a", cid + ":/o/u", str(dest))
        os.chown(dest, 1000, 1001)  # the CLI does not chown what it extracts
        eng.docker("cp", "-a", str(dest), cid + ":/o/u2")
        assert eng.docker("exec", cid, "stat", "-c", "%u:%g", "/o/u2").stdout.strip() == "1000:1001"
    finally:
        eng.docker("rm", "-f", cid)


@remap_ok
def test_a_container_with_userns_host_is_not_mapped(eng, remap):
    cid = eng.docker("run", "-d", *N, "--userns", "host", "busybox", "sleep", "120").stdout.strip()
    try:
        pid = int(eng.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        root = Path("/proc/%d/root" % pid)
        assert _cp_in(eng, _tar([("h", 5, 6)]), cid + ":/tmp").returncode == 0
        assert _cp_in(eng, _tar([("k", 70000, 6)]), cid + ":/tmp", "-a").returncode == 0  # no map to leave
        assert _owner(root / "tmp" / "h") == (0, 0) and _owner(root / "tmp" / "k") == (70000, 6)
        assert _cp_out(eng, cid + ":/tmp/k") == {"k": (70000, 6)}
    finally:
        eng.docker("rm", "-f", cid)
