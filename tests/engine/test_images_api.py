"""Images API driven by the real docker CLI and docker-py (unix socket, in-process image/volume engine)."""

import gzip
import io
import json
import os
import tarfile

import pytest

from tests.engine import images_helper
from tests.engine.test_images_store import BASE, TOP, sha, two_layer_config
from tests.images import busybox_image_id, busybox_tar, image_config, layer_tar, write_archive

images_engine = images_helper.images_engine  # the fixture, used by name below


def test_load_images_tag_rmi_with_the_cli(images_engine):
    e = images_engine
    out = e.docker("load", "-i", str(busybox_tar())).stdout.decode()
    assert out == "Loaded image: busybox:latest\n"
    bid = busybox_image_id()
    assert e.docker("images", "-q").stdout.decode().split() == [bid[7:19]]
    rows = e.docker("images", "--format", "{{.Repository}} {{.Tag}} {{.ID}} {{.Size}}").stdout.decode()
    assert rows.split()[:3] == ["busybox", "latest", bid[7:19]] and rows.split()[3].endswith("MB")
    e.docker("tag", "busybox", "localhost:5000/team/bb:v1")
    e.docker("tag", bid[7:19], "bb2")
    tags = json.loads(e.docker("image", "inspect", "busybox", "--format", "{{json .RepoTags}}").stdout)
    assert tags == ["bb2:latest", "busybox:latest", "localhost:5000/team/bb:v1"]
    p = e.docker("rmi", bid[7:19], check=False)
    assert p.returncode == 1 and b"must be forced" in p.stderr and b"multiple repositories" in p.stderr
    assert e.docker("rmi", "bb2").stdout.decode() == "Untagged: bb2:latest\n"
    assert e.docker("rmi", "localhost:5000/team/bb:v1").stdout.decode() == "Untagged: localhost:5000/team/bb:v1\n"
    assert e.docker("rmi", "busybox").stdout.decode() == f"Untagged: busybox:latest\nDeleted: {bid}\n"
    assert e.docker("images", "-qa").stdout == b""
    p = e.docker("rmi", "busybox", check=False)
    assert p.returncode == 1 and b"No such image: busybox:latest" in p.stderr


def test_load_from_stdin_quiet_and_progress(images_engine):
    e = images_engine
    data = busybox_tar().read_bytes()
    assert e.docker("load", "-q", input=data).stdout.decode() == "Loaded image: busybox:latest\n"
    # loading again is a no-op for the layers and the same image ID
    assert e.docker("load", input=data).stdout.decode() == "Loaded image: busybox:latest\n"
    p = e.docker("load", input=b"definitely not a tarball" * 100, check=False)
    assert p.returncode == 1 and b"invalid archive" in p.stderr


def test_inspect_history_and_filters(images_engine, tmp_path):
    e = images_engine
    labeled = image_config([sha(BASE)], extra_config={"Labels": {"tier": "base"}})
    write_archive(tmp_path / "l.tar", [(labeled, [BASE], ["labeled:1"]), (two_layer_config(), [BASE, TOP], [])])
    e.docker("load", "-i", str(tmp_path / "l.tar"))
    e.docker("load", "-i", str(busybox_tar()))
    info = json.loads(e.docker("image", "inspect", "labeled:1").stdout)[0]
    assert info["Id"] == sha(labeled) and info["RootFS"] == {"Type": "layers", "Layers": [sha(BASE)]}
    assert info["Config"]["Labels"] == {"tier": "base"} and info["Os"] == "linux"
    assert info["GraphDriver"]["Name"] == "overlay2" and info["Created"] == "2024-01-01T00:00:00Z"
    assert info["Metadata"]["LastTagTime"] != "0001-01-01T00:00:00Z"

    def q(*filters):
        args = [a for f in filters for a in ("--filter", f)]
        return sorted(e.docker("images", "-q", "--no-trunc", *args).stdout.decode().split())

    assert q("dangling=true") == [sha(two_layer_config())]
    assert q("dangling=false") == sorted([sha(labeled), busybox_image_id()])
    assert q("label=tier=base") == [sha(labeled)] and q("label=tier") == [sha(labeled)]
    assert q("reference=busy*") == [busybox_image_id()] and q("reference=labeled:*") == [sha(labeled)]
    p = e.docker("images", "--filter", "bogus=1", check=False)
    assert p.returncode == 1 and b"invalid filter 'bogus'" in p.stderr
    hist = e.docker("history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}", "busybox").stdout
    assert hist.decode().split("|")[:2] == [busybox_image_id(), "dockyard tests: busybox-static"]
    two = e.docker("history", "-q", sha(two_layer_config())[7:19]).stdout.decode().split()
    assert two == [sha(two_layer_config())[7:19], "<missing>"]


def test_save_load_round_trip_with_the_cli(images_engine, tmp_path):
    e = images_engine
    e.docker("load", "-i", str(busybox_tar()))
    e.docker("tag", "busybox", "mine:1.0")
    out = tmp_path / "out.tar"
    e.docker("save", "-o", str(out), "busybox", "mine:1.0")
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert sorted(manifest[0]["RepoTags"]) == ["busybox:latest", "mine:1.0"]
        assert "oci-layout" in tar.getnames() and "index.json" in tar.getnames()
    e.docker("rmi", "busybox", "mine:1.0")
    assert e.docker("images", "-qa").stdout == b""
    loaded = e.docker("load", "-i", str(out)).stdout.decode().splitlines()
    assert sorted(loaded) == ["Loaded image: busybox:latest", "Loaded image: mine:1.0"]
    assert e.docker("images", "-q", "--no-trunc", "mine").stdout.decode().split() == [busybox_image_id()]
    p = e.docker("save", "-o", str(tmp_path / "x.tar"), "nosuch", check=False)
    assert p.returncode == 1 and b"No such image" in p.stderr
    e.docker("save", "-o", str(tmp_path / "one.tar"), "busybox")
    assert e.docker("save", "busybox").stdout == (tmp_path / "one.tar").read_bytes()  # deterministic


def test_import_with_changes_and_message(images_engine, tmp_path):
    e = images_engine
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([("etc", "dir", None, 0o755), ("etc/motd", "file", "hi\n", 0o644)]))
    out = (
        e.docker(
            "import",
            "-c",
            'CMD ["cat", "/etc/motd"]',
            "-c",
            "ENV X=1",
            "-m",
            "from a tarball",
            str(rootfs),
            "imported:v1",
        )
        .stdout.decode()
        .strip()
    )
    assert out.startswith("sha256:")
    info = json.loads(e.docker("image", "inspect", "imported:v1").stdout)[0]
    assert info["Id"] == out and info["Comment"] == "from a tarball"
    assert info["Config"]["Cmd"] == ["cat", "/etc/motd"] and info["Config"]["Env"] == ["X=1"]
    hist = e.docker("history", "--format", "{{.Comment}}", "imported:v1").stdout.decode().strip()
    assert hist == "from a tarball"
    # from stdin, compressed
    out2 = e.docker("import", "-", "gz:1", input=gzip.compress(rootfs.read_bytes())).stdout.decode().strip()
    assert json.loads(e.docker("image", "inspect", "gz:1").stdout)[0]["RootFS"]["Layers"] == [
        sha(rootfs.read_bytes())
    ] and out2.startswith("sha256:")


def test_prune_and_pull_error(images_engine, tmp_path):
    e = images_engine
    write_archive(tmp_path / "d.tar", [(image_config([sha(BASE)]), [BASE], [])])
    e.docker("load", "-i", str(tmp_path / "d.tar"))
    e.docker("load", "-i", str(busybox_tar()))
    out = e.docker("image", "prune", "-f").stdout.decode()
    assert f"deleted: {sha(image_config([sha(BASE)]))}" in out.lower()
    assert e.docker("images", "-q").stdout.decode().split() == [busybox_image_id()[7:19]]
    out = e.docker("image", "prune", "-a", "-f").stdout.decode()
    assert "untagged: busybox:latest" in out.lower()
    assert e.docker("images", "-qa").stdout == b""
    p = e.docker("pull", "busybox", check=False)
    assert p.returncode == 1 and b"only pulls from local registries" in p.stderr


def test_tar_slip_in_docker_load_is_refused(images_engine, tmp_path):
    e = images_engine
    evil = layer_tar([("etc", "dir", None, 0o755), ("etc/../../../../../../../tmp/dockyard-evil", "file", "x", 0o644)])
    write_archive(tmp_path / "evil.tar", [(image_config([sha(evil)]), [evil], ["evil:1"])])
    p = e.docker("load", "-i", str(tmp_path / "evil.tar"), check=False)
    assert p.returncode == 1 and b"contains '..'" in p.stderr
    assert not os.path.exists("/tmp/dockyard-evil")
    link_evil = layer_tar([("x", "symlink", "../../../../../tmp", 0o777), ("x/dockyard-evil2", "file", "x", 0o644)])
    write_archive(tmp_path / "evil2.tar", [(image_config([sha(link_evil)]), [link_evil], ["evil:2"])])
    p = e.docker("load", "-i", str(tmp_path / "evil2.tar"), check=False)
    assert p.returncode == 1 and b"points outside" in p.stderr
    assert not os.path.exists("/tmp/dockyard-evil2")
    assert e.docker("images", "-qa").stdout == b""


def test_docker_py_images(images_engine, tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    client = images_engine.client()
    loaded = client.images.load(busybox_tar().read_bytes())
    assert [i.id for i in loaded] == [busybox_image_id()] and loaded[0].tags == ["busybox:latest"]
    img = client.images.get("busybox")
    assert img.tag("pyrepo/x", "2") is True
    assert sorted(client.images.get(img.id).tags) == ["busybox:latest", "pyrepo/x:2"]
    assert [i.id for i in client.images.list()] == [img.id]
    assert client.images.list(name="pyrepo/x") and not client.images.list(filters={"dangling": True})
    data = b"".join(img.save(named=True))
    assert "manifest.json" in tarfile.open(fileobj=io.BytesIO(data)).getnames()
    client.images.remove("pyrepo/x:2")
    client.images.remove(img.id, force=True)
    assert client.images.list(all=True) == []
    assert [i.id for i in client.images.load(data)] == [img.id]
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("nosuch:1")
    with pytest.raises(docker.errors.APIError):
        client.images.load(b"garbage" * 100)
    hist = img.history()
    assert hist[0]["Id"] == img.id and hist[0]["Tags"] == ["busybox:latest"]
    assert client.images.prune(filters={"dangling": False})["ImagesDeleted"]
