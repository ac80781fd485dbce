"""`docker cp` both ways (real CLI and docker-py) on stopped and running containers, and escape attempts.

The container is the images_helper stand-in: a real overlay rootfs from the image
store, and for "running" a real process chrooted into it in its own mount
namespace, so the engine goes through /proc/<pid>/root as with real containers.
"""

import io
import os
import stat
import tarfile

import docker
import pytest

from dockyard.engine.api.filecopy import GO_MODE_DIR, GO_MODE_SYMLINK, go_file_mode
from tests.engine import images_helper
from tests.images import busybox_tar

images_engine = images_helper.images_engine  # the fixture, used by name below


@pytest.fixture
def web(images_engine):
    images_engine.docker("load", "-i", str(busybox_tar()))
    return images_engine.containers.create("web", "busybox")


@pytest.fixture
def host_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    os.chown(tmp_path / "a.txt", 1234, 1234)
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("deep\n")
    (tmp_path / "tree" / "link").symlink_to("sub/f")
    return tmp_path


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_cp_both_ways(images_engine, web, host_files, running):
    e = images_engine
    if running:
        e.containers.start(web, "/bin/sleep", "1000")
        assert os.readlink(f"/proc/{web.pid}/root") == web.rootfs
    e.docker("cp", str(host_files / "a.txt"), "web:/tmp/")
    e.docker("cp", str(host_files / "tree"), "web:/tmp/tree")
    e.docker("cp", str(host_files / "a.txt"), "web:/root/renamed.txt")
    e.docker("cp", "-a", str(host_files / "a.txt"), "web:/root/kept.txt")
    root = web.rootfs
    assert open(f"{root}/tmp/a.txt").read() == "hello\n"
    assert os.stat(f"{root}/tmp/a.txt").st_uid == 0  # without -a: owned by root
    assert os.stat(f"{root}/root/kept.txt").st_uid == 1234  # -a keeps uid/gid
    assert open(f"{root}/root/renamed.txt").read() == "hello\n"
    assert open(f"{root}/tmp/tree/sub/f").read() == "deep\n" and os.readlink(f"{root}/tmp/tree/link") == "sub/f"

    out = host_files / "out"
    out.mkdir()
    e.docker("cp", "web:/etc/passwd", str(out))
    assert (out / "passwd").read_text().startswith("root:x:0:0:")
    e.docker("cp", "web:/tmp/tree", str(out / "copy"))
    assert (out / "copy" / "sub" / "f").read_text() == "deep\n"
    e.docker("cp", "web:/bin/sh", str(out / "sh"))
    assert os.readlink(out / "sh") == "busybox"  # the link itself...
    e.docker("cp", "-L", "web:/bin/sh", str(out / "sh2"))
    assert (out / "sh2").stat().st_size > 1_000_000  # ...or what it points to
    assert e.docker("cp", "web:/root/renamed.txt", "-").stdout.startswith(b"renamed.txt\0")
    p = e.docker("cp", "web:/nonexistent", str(out), check=False)
    assert p.returncode == 1 and b"Could not find the file /nonexistent in container web" in p.stderr
    p = e.docker("cp", str(host_files / "a.txt"), "web:/etc/passwd/", check=False)
    assert p.returncode == 1
    p = e.docker("cp", "nosuchctr:/etc/passwd", "-", check=False)
    assert p.returncode == 1 and b"No such container: nosuchctr" in p.stderr


def test_container_symlinks_cannot_reach_host_files(images_engine, web, host_files):
    e = images_engine
    secret_dir = host_files / "hostsecret"
    secret_dir.mkdir()
    (secret_dir / "secret").write_text("host only\n")
    before = sorted(os.listdir(secret_dir))
    root = web.rootfs
    # links a container process could plant, pointing at host paths
    os.symlink(str(secret_dir), f"{root}/tmp/evil")
    os.symlink(str(secret_dir / "secret"), f"{root}/tmp/evilfile")
    os.symlink("../../../../../../../../" + str(secret_dir).lstrip("/"), f"{root}/tmp/climb")
    e.containers.start(web, "/bin/sleep", "1000")
    for target in ("web:/tmp/evil/", "web:/tmp/climb/", "web:/tmp/evil/x.txt"):
        e.docker("cp", str(host_files / "a.txt"), target, check=False)
    assert sorted(os.listdir(secret_dir)) == before
    for src in ("web:/tmp/evil/secret", "web:/tmp/climb/secret"):
        p = e.docker("cp", src, "-", check=False)
        assert p.returncode == 1 and b"host only" not in p.stdout
    p = e.docker("cp", "-L", "web:/tmp/evilfile", str(host_files / "got"), check=False)
    assert b"host only" not in p.stdout and not (host_files / "got").exists()


def test_put_archive_tar_slip_is_a_400(images_engine, web, tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    client = images_engine.client()
    ctr = client.api
    for name, kind, link in (
        ("../../../../../../../../tmp/dockyard-cp-slip", "file", ""),
        ("/tmp/dockyard-cp-slip", "file", ""),
        ("up", "symlink", "../../../../../../../.."),
        ("hl", "hardlink", "../../../../../../../etc/passwd"),
    ):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 4
                tar.addfile(info, io.BytesIO(b"evil"))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = link
                tar.addfile(info)
        with pytest.raises(docker.errors.APIError) as err:
            ctr.put_archive("web", "/tmp", buf.getvalue())
        assert err.value.status_code == 400, err.value
    assert not os.path.exists("/tmp/dockyard-cp-slip")
    assert sorted(os.listdir(f"{web.rootfs}/tmp")) == []


def test_stat_header_and_get_archive_with_docker_py(images_engine, web, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    api = images_engine.client().api
    st = api.get_archive("web", "/etc")[1]
    assert st["name"] == "etc" and st["mode"] & GO_MODE_DIR and st["mode"] & 0o777 == 0o755
    stream, st = api.get_archive("web", "/bin/sh")
    assert st["mode"] & GO_MODE_SYMLINK and st["linkTarget"] == "/bin/busybox"
    data = b"".join(stream)
    member = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[0]
    assert member.name == "sh" and member.issym() and member.linkname == "busybox"
    assert api.put_archive("web", "/tmp", _tar_of("new.txt", b"x")) is True
    with pytest.raises(docker.errors.NotFound):
        api.get_archive("web", "/nope")
    with pytest.raises(docker.errors.APIError) as err:
        api.put_archive("web", "/etc/passwd", _tar_of("x", b"y"))
    assert err.value.status_code == 400


def _tar_of(name, data):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_go_file_mode_bits():
    assert go_file_mode(stat.S_IFDIR | 0o755) == (1 << 31) | 0o755
    assert go_file_mode(stat.S_IFREG | stat.S_ISUID | 0o4755 & 0o777) == (1 << 23) | 0o755
    assert go_file_mode(stat.S_IFCHR | 0o666) == (1 << 26) | (1 << 21) | 0o666
    assert go_file_mode(stat.S_IFIFO | 0o600) == (1 << 25) | 0o600
    assert go_file_mode(stat.S_IFDIR | stat.S_ISVTX | 0o777) == (1 << 31) | (1 << 20) | 0o777
