"""Volumes: the store (named, anonymous, labels, in use, prune) and `docker volume ...` through the real CLI."""

import json
import os

import pytest

from dockyard.engine.errors import Conflict, InvalidParameter, NotFound
from dockyard.engine.volumes import ANONYMOUS_LABEL, VolumeStore
from tests.engine import images_helper

images_engine = images_helper.images_engine  # the fixture, used by name below


@pytest.fixture
def vols(tmp_path):
    return VolumeStore(str(tmp_path / "data"))


def test_named_anonymous_and_labels(vols, tmp_path):
    v = vols.create("data1", labels={"a": "b"})
    assert v.mountpoint == str(tmp_path / "data" / "volumes" / "data1" / "_data")
    assert os.path.isdir(v.mountpoint)
    assert vols.create("data1").labels == {"a": "b"}  # create is idempotent
    anon = vols.create()
    assert len(anon.name) == 64 and anon.anonymous and anon.labels == {ANONYMOUS_LABEL: ""}
    api = vols.get("data1").to_api()
    assert api["Driver"] == "local" and api["Scope"] == "local" and api["Labels"] == {"a": "b"}
    assert api["CreatedAt"].startswith("20") and api["Options"] is None
    assert [x.name for x in vols.list()] == sorted(["data1", anon.name])
    for bad in ("a", "/abs", "has space", "../x", ".hidden"):
        with pytest.raises(InvalidParameter):
            vols.create(bad)
    with pytest.raises(InvalidParameter, match="driver options"):
        vols.create("opts", options={"type": "tmpfs"})
    with pytest.raises(NotFound, match="plugin"):
        vols.create("x1", driver="nfs")


def test_in_use_remove_and_prune(vols):
    users = {"busy": ["c" * 64]}
    vols.set_usage_check(lambda name: users.get(name, []))
    busy = vols.create("busy")
    vols.create("idle")
    anon = vols.create()
    (open(os.path.join(anon.mountpoint, "f"), "w")).write("12345")
    with pytest.raises(Conflict, match="volume is in use"):
        vols.remove("busy")
    with pytest.raises(Conflict):
        vols.remove("busy", force=True)  # force does not override "in use" (as docker)
    with pytest.raises(NotFound, match="no such volume"):
        vols.remove("missing")
    vols.remove("missing", force=True)
    assert vols.prune() == ([anon.name], 5)  # anonymous only by default
    assert vols.prune(include_named=True) == (["idle"], 0)
    assert [v.name for v in vols.list()] == ["busy"]
    users.clear()
    vols.remove("busy")
    assert not os.path.exists(busy.path)


def test_volume_cli(images_engine):
    e = images_engine
    assert e.docker("volume", "create", "myvol").stdout.decode() == "myvol\n"
    e.docker("volume", "create", "--label", "team=a", "labeled")
    anon = e.volumes.create()
    ls = e.docker("volume", "ls", "--format", "{{.Driver}} {{.Name}}").stdout.decode().splitlines()
    assert sorted(ls) == sorted(["local myvol", "local labeled", "local " + anon.name])
    assert e.docker("volume", "ls", "-q", "--filter", "label=team=a").stdout.decode().split() == ["labeled"]
    assert e.docker("volume", "ls", "-q", "--filter", "name=my").stdout.decode().split() == ["myvol"]
    info = json.loads(e.docker("volume", "inspect", "myvol").stdout)[0]
    assert info["Name"] == "myvol" and info["Mountpoint"].endswith("/volumes/myvol/_data")
    assert json.loads(e.docker("inspect", "--type", "volume", "labeled").stdout)[0]["Labels"] == {"team": "a"}
    e.volumes.set_usage_check(lambda name: ["d" * 64] if name == "myvol" else [])
    p = e.docker("volume", "rm", "myvol", check=False)
    assert p.returncode == 1 and b"volume is in use" in p.stderr
    assert e.docker("volume", "ls", "-q", "--filter", "dangling=false").stdout.decode().split() == ["myvol"]
    out = e.docker("volume", "prune", "-f").stdout.decode()
    assert anon.name in out and "labeled" not in out
    out = e.docker("volume", "prune", "-f", "-a").stdout.decode()
    assert "labeled" in out and "myvol" not in out
    e.volumes.set_usage_check(None)
    assert e.docker("volume", "rm", "myvol").stdout.decode() == "myvol\n"
    p = e.docker("volume", "rm", "myvol", check=False)
    assert p.returncode == 1 and b"no such volume" in p.stderr
    p = e.docker("volume", "inspect", "nosuch", check=False)
    assert p.returncode == 1


def test_volume_docker_py(images_engine, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    client = images_engine.client()
    v = client.volumes.create("pyvol", labels={"x": "1"})
    assert v.name == "pyvol" and client.volumes.get("pyvol").attrs["Labels"] == {"x": "1"}
    assert [x.name for x in client.volumes.list(filters={"label": "x=1"})] == ["pyvol"]
    v.remove()
    assert client.volumes.list() == []


def test_volume_dirs_are_private_also_when_made_by_an_older_engine(tmp_path):
    old = tmp_path / "data" / "volumes" / "old"
    (old / "_data").mkdir(parents=True)
    os.chmod(old.parent, 0o701)
    os.chmod(old, 0o711)
    store = VolumeStore(str(tmp_path / "data"))
    new = store.create("new")
    for path in (old.parent, old, new.path):
        assert os.stat(path).st_mode & 0o777 == 0o700, path
    assert os.stat(new.mountpoint).st_mode & 0o777 == 0o755  # the volume's own root: the image's (or 0755)
