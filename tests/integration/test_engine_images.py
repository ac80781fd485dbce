"""End to end on a real test host (`dockyard create -d generic`), over mutual TLS: images, volumes, docker cp.

The real docker CLI and docker-py talk to the engine the way a user does. The
host's data-root (/var/lib/dockyard) is a real-disk directory bound into the host
(tests/hosts/netns_host.py), because its root is an overlay that cannot carry
the engine's overlay upper dirs.
"""

import io
import json
import tarfile

import pytest

from tests.images import busybox_image_id, busybox_tar, layer_tar, python_tar
from tests.integration.conftest import docker_py

pytestmark = pytest.mark.integration


def create_generic(dockyard, host, name):
    return dockyard(
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        host.ip,
        "--generic-ssh-key",
        host.key_path,
        "--generic-ssh-user",
        "root",
        name,
    )


@pytest.fixture
def machine(dockyard, make_host):
    host = make_host()
    create_generic(dockyard, host, "imgs")
    return host


def test_images_lifecycle_with_the_cli(dockyard, machine, tmp_path):
    d = lambda *a, **kw: dockyard.docker("imgs", *a, **kw)  # noqa: E731
    assert d("load", "-i", str(busybox_tar())).stdout == "Loaded image: busybox:latest\n"
    bid = busybox_image_id()
    assert d("images", "-q").stdout.split() == [bid[7:19]]
    layers = machine.exec("ls /var/lib/dockyard/image/layers").stdout.split()
    assert (
        len(layers) == 1
        and machine.exec(f"test -x /var/lib/dockyard/image/layers/{layers[0]}/diff/bin/busybox").returncode == 0
    )

    d("tag", "busybox", "team/bb:1")
    info = json.loads(d("image", "inspect", "team/bb:1").stdout)[0]
    assert info["Id"] == bid and sorted(info["RepoTags"]) == ["busybox:latest", "team/bb:1"]
    assert info["RootFS"]["Type"] == "layers" and info["Config"]["Cmd"] == ["sh"]
    assert "busybox-static" in d("history", "busybox").stdout

    saved = tmp_path / "saved.tar"
    d("save", "-o", str(saved), "busybox", "team/bb:1")
    assert d("rmi", "team/bb:1").stdout == "Untagged: team/bb:1\n"
    assert d("rmi", "busybox").stdout == f"Untagged: busybox:latest\nDeleted: {bid}\n"
    assert d("images", "-qa").stdout == ""
    assert machine.exec("ls /var/lib/dockyard/image/layers").stdout.split() == []  # layer collected
    loaded = sorted(d("load", "-i", str(saved)).stdout.splitlines())
    assert loaded == ["Loaded image: busybox:latest", "Loaded image: team/bb:1"]
    assert d("images", "-q", "--no-trunc", "busybox").stdout.split() == [bid]  # same bytes, same ID

    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([("etc", "dir", None, 0o755), ("etc/motd", "file", "imported\n", 0o644)]))
    new_id = d("import", "-c", 'CMD ["cat", "/etc/motd"]', "-m", "e2e", str(rootfs), "imp:1").stdout.strip()
    cfg = json.loads(d("image", "inspect", "imp:1").stdout)[0]
    assert cfg["Id"] == new_id and cfg["Config"]["Cmd"] == ["cat", "/etc/motd"] and cfg["Comment"] == "e2e"

    evil = tmp_path / "evil.tar"
    evil.write_bytes(layer_tar([("../../../../../../../../root/dockyard-evil", "file", "x", 0o644)]))
    p = d("import", str(evil), "evil:1", check=False)
    assert p.returncode == 1 and "contains '..'" in p.stderr
    assert machine.exec("ls /root/dockyard-evil").returncode != 0

    d("rmi", "team/bb:1")
    out = d("image", "prune", "-a", "-f").stdout
    assert f"deleted: {new_id}" in out.lower() and f"deleted: {bid}" in out.lower()
    assert d("images", "-qa").stdout == ""
    p = d("pull", "busybox", check=False)
    assert p.returncode == 1 and "only pulls from local registries" in p.stderr


def test_volumes_with_the_cli(dockyard, machine):
    d = lambda *a, **kw: dockyard.docker("imgs", *a, **kw)  # noqa: E731
    assert d("volume", "create", "--label", "k=v", "data").stdout == "data\n"
    info = json.loads(d("volume", "inspect", "data").stdout)[0]
    assert info["Mountpoint"] == "/var/lib/dockyard/volumes/data/_data" and info["Labels"] == {"k": "v"}
    assert machine.exec("test -d /var/lib/dockyard/volumes/data/_data").returncode == 0
    assert d("volume", "ls", "-q", "--filter", "label=k=v").stdout.split() == ["data"]
    assert "data" in d("volume", "prune", "-a", "-f").stdout
    assert d("volume", "ls", "-q").stdout == ""
    d("volume", "create", "gone")
    assert d("volume", "rm", "gone").stdout == "gone\n"
    p = d("volume", "rm", "gone", check=False)
    assert p.returncode == 1 and "no such volume" in p.stderr


def test_docker_py_over_tls(dockyard, machine, monkeypatch):
    client = docker_py(dockyard, "imgs", monkeypatch, timeout=300)
    images = client.images.load(busybox_tar().read_bytes())
    assert [i.id for i in images] == [busybox_image_id()] and images[0].tags == ["busybox:latest"]
    img = client.images.get("busybox:latest")
    img.tag("py/bb", "x")
    assert sorted(client.images.get(img.id).tags) == ["busybox:latest", "py/bb:x"]
    data = b"".join(img.save(named=True))
    assert "manifest.json" in tarfile.open(fileobj=io.BytesIO(data)).getnames()
    client.images.remove("py/bb:x")
    client.images.remove(img.id, force=True)
    assert client.images.list(all=True) == []
    assert [i.id for i in client.images.load(data)] == [img.id]
    vol = client.volumes.create("pyvol")
    assert client.volumes.get("pyvol").attrs["Mountpoint"].endswith("/pyvol/_data")
    vol.remove()


def test_load_python_image(dockyard, machine):
    """The Debian + python3 test image (mmdebstrap) goes through docker load (large, chunked upload)."""
    out = dockyard.docker("imgs", "load", "-i", str(python_tar()), timeout=600).stdout
    assert out == "Loaded image: pyweb:latest\n"
    info = json.loads(dockyard.docker("imgs", "image", "inspect", "pyweb").stdout)[0]
    assert info["Config"]["Cmd"] == ["python3"] and info["Size"] > 20_000_000
    layer = info["RootFS"]["Layers"][0].split(":")[1]
    assert machine.exec(f"test -x /var/lib/dockyard/image/layers/{layer}/diff/usr/bin/python3").returncode == 0


def test_docker_cp_both_ways(dockyard, machine, tmp_path):
    """Needs the containers API (runtime part): docker create/start/rm."""
    d = lambda *a, **kw: dockyard.docker("imgs", *a, **kw)  # noqa: E731
    d("load", "-i", str(busybox_tar()))
    d("create", "--name", "web", "busybox", "sleep", "1000")
    src = tmp_path / "a.txt"
    src.write_text("payload\n")
    d("cp", str(src), "web:/tmp/")  # stopped: through the overlay rootfs
    d("cp", "web:/etc/passwd", str(tmp_path))
    assert (tmp_path / "passwd").read_text().startswith("root:x:0:0:")
    d("start", "web")
    assert d("exec", "web", "cat", "/tmp/a.txt").stdout == "payload\n"
    d("cp", str(src), "web:/root/b.txt")  # running: through /proc/<pid>/root
    assert d("exec", "web", "cat", "/root/b.txt").stdout == "payload\n"
    d("exec", "web", "sh", "-c", "echo from-inside > /tmp/c.txt")
    d("cp", "web:/tmp/c.txt", str(tmp_path / "c.txt"))
    assert (tmp_path / "c.txt").read_text() == "from-inside\n"
    d("exec", "web", "ln", "-s", "/root", "/tmp/escape")  # a link inside the container stays inside
    d("cp", str(src), "web:/tmp/escape/d.txt")
    assert d("exec", "web", "cat", "/root/d.txt").stdout == "payload\n"
    assert machine.exec("ls /root/d.txt").returncode != 0
    p = d("cp", "web:/nonexistent", str(tmp_path), check=False)
    assert p.returncode == 1 and "Could not find the file /nonexistent" in p.stderr
    d("rm", "-f", "web")
