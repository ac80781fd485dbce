"""The image store on a real data-root: load (docker and OCI layouts), save round trips, import,
layer sharing and whiteouts through real overlay mounts, rmi rules, prune."""

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from dockyard.engine.errors import Conflict, InvalidParameter, NotFound
from dockyard.engine.images import importer, loadsave, reference
from dockyard.engine.images.store import ImageStore
from tests.images import busybox_image_id, busybox_tar, image_config, layer_tar, write_archive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers keep owners and overlay needs root")


@pytest.fixture
def store(tmp_path):
    s = ImageStore(str(tmp_path / "data"))
    yield s
    for name in os.listdir(s.rootfs.root):
        s.rootfs.unmount(name)


def load(store, path, quiet=True):
    msgs = []
    loadsave.load(store, str(path), msgs.append, quiet=quiet)
    return msgs


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def save_bytes(store, names):
    buf = io.BytesIO()
    loadsave.save(store, loadsave.resolve_save_names(store, names), buf)
    return buf.getvalue()


BASE = layer_tar(
    [
        ("a", "dir", None, 0o755),
        ("a/b", "file", "b", 0o644),
        ("a/c", "file", "c", 0o644),
        ("d", "dir", None, 0o755),
        ("d/x", "file", "x", 0o644),
        ("link", "symlink", "a/c", 0o777),
    ]
)
TOP = layer_tar(
    [
        ("a", "dir", None, 0o755),
        ("a/.wh.b", "file", "", 0o644),
        ("d", "dir", None, 0o755),
        ("d/.wh..wh..opq", "file", "", 0o644),
        ("d/y", "file", "y", 0o644),
    ]
)


def two_layer_config(cmd=("sh",)):
    return image_config([sha(BASE), sha(TOP)], cmd=cmd)


def test_load_busybox_docker_archive(store):
    msgs = load(store, busybox_tar())
    assert msgs == [{"stream": "Loaded image: busybox:latest\n"}]
    img = store.get("busybox")
    assert img.id == busybox_image_id()
    assert store.get("busybox:latest") is img and store.get(img.id[7:19]) is img and store.get(img.id) is img
    assert store.get("docker.io/library/busybox:latest") is img
    assert img.repo_tags == ["busybox:latest"]
    assert img.size > 1_000_000
    assert os.path.isfile(os.path.join(img.layer_dirs()[0], "bin", "busybox"))
    with pytest.raises(NotFound, match="No such image: nosuch:latest"):
        store.get("nosuch")


@pytest.mark.parametrize(
    "layout,gz_layers,gz_outer", [("oci", True, False), ("oci", False, True), ("docker", True, True)]
)
def test_layouts_compression_and_whiteouts_through_overlay(store, tmp_path, layout, gz_layers, gz_outer):
    path = write_archive(
        tmp_path / "img.tar",
        [(two_layer_config(), [BASE, TOP], ["docker.io/library/two:1"])],
        layout=layout,
        gzip_layers=gz_layers,
        gzip_outer=gz_outer,
    )
    msgs = load(store, path, quiet=False)
    assert msgs[-1] == {"stream": "Loaded image: two:1\n"}
    assert any(m.get("status") == "Loading layer" for m in msgs)
    img = store.get("two:1")
    assert img.diff_ids == [sha(BASE), sha(TOP)]
    merged = store.mount_rootfs("c1", img)
    assert sorted(os.listdir(os.path.join(merged, "a"))) == ["c"]  # .wh.b hid a/b
    assert sorted(os.listdir(os.path.join(merged, "d"))) == ["y"]  # opaque dir hid d/x
    assert os.readlink(os.path.join(merged, "link")) == "a/c"
    with open(os.path.join(merged, "a", "new"), "w") as fh:  # writes go to the upper dir
        fh.write("n")
    assert not os.path.exists(os.path.join(img.layer_dirs()[0], "a", "new"))
    assert store.mount_rootfs("c1", img) == merged  # idempotent
    store.unmount_rootfs("c1")
    assert not os.path.ismount(merged)
    assert open(os.path.join(store.rootfs.remount("c1"), "a", "new")).read() == "n"
    store.remove_rootfs("c1")
    assert not os.path.exists(os.path.dirname(merged))


def test_untagged_image_and_bad_diff_id(store, tmp_path):
    cfg = image_config([sha(BASE)])
    load_msgs = load(store, write_archive(tmp_path / "u.tar", [(cfg, [BASE], [])]))
    assert load_msgs == [{"stream": "Loaded image ID: %s\n" % sha(cfg)}]
    bad = image_config(["sha256:" + "0" * 64])
    with pytest.raises(InvalidParameter, match="invalid diffID"):
        load(store, write_archive(tmp_path / "bad.tar", [(bad, [TOP], ["bad:1"])]))
    with pytest.raises(NotFound):
        store.get("bad:1")
    assert not store.layers.exists(sha(TOP))
    with pytest.raises(InvalidParameter, match="manifest.json or index.json"):
        load(store, _plain_tar(tmp_path / "x.tar"))


def _plain_tar(path):
    with tarfile.open(path, "w") as tar:
        data = b"hello"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_slip_layer_is_refused_and_nothing_is_written_outside(store, tmp_path):
    evil = layer_tar([("ok", "file", "fine", 0o644), ("../../../../../../tmp/dockyard-slip", "file", "x", 0o644)])
    cfg = image_config([sha(evil)])
    with pytest.raises(InvalidParameter, match="contains '..'"):
        load(store, write_archive(tmp_path / "evil.tar", [(cfg, [evil], ["evil:1"])]))
    assert not os.path.exists("/tmp/dockyard-slip")
    assert store.list() == [] and store.layers.list_ids() == []


def test_save_round_trip_is_byte_exact(store, tmp_path):
    load(store, busybox_tar())
    load(store, write_archive(tmp_path / "two.tar", [(two_layer_config(), [BASE, TOP], ["two:1", "two:2"])]))
    data = save_bytes(store, ["busybox", "two"])
    tar = tarfile.open(fileobj=io.BytesIO(data))
    names = tar.getnames()
    assert {"index.json", "manifest.json", "oci-layout", "repositories"} <= set(names)
    for name in names:  # every blob is content-addressed: layers hash to their diff IDs
        if name.startswith("blobs/sha256/") and tar.getmember(name).isfile():
            assert sha(tar.extractfile(name).read()) == "sha256:" + name.rsplit("/", 1)[1]
    manifest = json.load(tar.extractfile("manifest.json"))
    assert sorted(t for m in manifest for t in m["RepoTags"]) == ["busybox:latest", "two:1", "two:2"]
    index = json.load(tar.extractfile("index.json"))
    assert {m["annotations"]["io.containerd.image.name"] for m in index["manifests"]} == {
        "docker.io/library/busybox:latest",
        "docker.io/library/two:1",
        "docker.io/library/two:2",
    }
    other = ImageStore(str(tmp_path / "other"))
    (tmp_path / "saved.tar").write_bytes(data)
    msgs = load(other, tmp_path / "saved.tar")
    assert {m["stream"] for m in msgs} == {
        "Loaded image: busybox:latest\n",
        "Loaded image: two:1\n",
        "Loaded image: two:2\n",
    }
    assert other.get("two:2").id == store.get("two:1").id == sha(two_layer_config())
    assert other.get("busybox").id == busybox_image_id()
    # saved by ID: no tags in the archive
    by_id = tarfile.open(fileobj=io.BytesIO(save_bytes(store, [store.get("two:1").id[7:19]])))
    assert json.load(by_id.extractfile("manifest.json"))[0]["RepoTags"] is None


def test_layer_that_cannot_be_spliced_is_kept_whole(store, tmp_path):
    # the same path twice: the first content is gone from diff/, so the tar is stored as it came
    dup = layer_tar([("f", "file", "first", 0o644), ("f", "file", "second!", 0o644)])
    load(store, write_archive(tmp_path / "dup.tar", [(image_config([sha(dup)]), [dup], ["dup:1"])]))
    layer = store.layers.get(sha(dup))
    assert os.path.exists(os.path.join(layer.dir, "layer.tar"))
    assert open(os.path.join(layer.diff_dir, "f")).read() == "second!"
    with layer.open_tar() as fh:
        assert fh.read() == dup


def test_layers_are_shared_and_collected(store, tmp_path):
    load(store, write_archive(tmp_path / "a.tar", [(image_config([sha(BASE)]), [BASE], ["a:1"])]))
    load(store, write_archive(tmp_path / "b.tar", [(two_layer_config(), [BASE, TOP], ["b:1"])]))
    assert sorted(store.layers.list_ids()) == sorted([sha(BASE), sha(TOP)])
    assert store.get("a:1").layer_dirs()[0] == store.get("b:1").layer_dirs()[0]
    store.mount_rootfs("ctr", store.get("b:1"))
    assert store.delete("b:1") == [{"Untagged": "b:1"}, {"Deleted": sha(two_layer_config())}]
    assert store.layers.exists(sha(TOP))  # the container still stands on it
    store.remove_rootfs("ctr")
    assert store.gc_layers() == [sha(TOP)]
    store.delete("a:1")
    assert store.layers.list_ids() == []


def test_rmi_rules(store, tmp_path):
    load(store, busybox_tar())
    img = store.get("busybox")
    store.tag(img.id, "other/name:2")
    store.tag(img.id, "busybox:v2")
    with pytest.raises(Conflict, match="must be forced.*multiple repositories"):
        store.delete(img.short_id)
    assert store.delete("busybox:v2") == [{"Untagged": "busybox:v2"}]
    users = []
    store.set_usage_check(lambda image_id: list(users) if image_id == img.id else [])
    users.append("f" * 64)
    store.delete("other/name:2")
    with pytest.raises(Conflict, match='unable to remove repository reference "busybox" \\(must force\\)'):
        store.delete("busybox")
    with pytest.raises(Conflict, match="must be forced.*stopped container ffffffffffff"):
        store.delete(img.id)
    store.set_running_check(lambda cid: True)
    with pytest.raises(Conflict, match="cannot be forced.*running container"):
        store.delete(img.id, force=True)
    # -f on the last tag while running: untagged, image kept dangling for its container
    assert store.delete("busybox", force=True) == [{"Untagged": "busybox:latest"}]
    assert store.get(img.id).repo_tags == []
    store.set_running_check(lambda cid: False)
    assert store.delete(img.id, force=True) == [{"Deleted": img.id}]
    with pytest.raises(NotFound):
        store.get(img.id)


def test_prune(store, tmp_path):
    load(store, write_archive(tmp_path / "a.tar", [(image_config([sha(BASE)]), [BASE], [])]))
    load(store, write_archive(tmp_path / "b.tar", [(two_layer_config(), [BASE, TOP], ["b:1"])]))
    deleted, reclaimed = store.prune(dangling_only=True)
    assert deleted == [{"Deleted": sha(image_config([sha(BASE)]))}] and reclaimed == 0  # BASE still shared
    assert [i.repo_tags for i in store.list()] == [["b:1"]]
    deleted, reclaimed = store.prune(dangling_only=False)
    assert {"Untagged": "b:1"} in deleted and reclaimed > 0
    assert store.list() == [] and store.layers.list_ids() == []


def test_import_with_changes(store):
    rootfs = layer_tar([("bin", "dir", None, 0o755), ("bin/tool", "file", "#!/bin/sh\n", 0o755)])
    changes = [
        'CMD ["/bin/tool", "x"]',
        "ENV A=1 B=two",
        "ENV C three words",
        "EXPOSE 80 53/udp",
        "WORKDIR /srv",
        "USER nobody",
        'LABEL a=b "c d"=e',
        "VOLUME /data",
        "ENTRYPOINT /bin/tool",
    ]
    img = importer.import_rootfs(store, io.BytesIO(rootfs), repo="imported", tag="v1", message="hello", changes=changes)
    assert store.get("imported:v1") is img
    cfg = img.container_config
    assert cfg["Cmd"] == ["/bin/tool", "x"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c", "/bin/tool"]
    assert cfg["Env"] == ["A=1", "B=two", "C=three words"]
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert (cfg["WorkingDir"], cfg["User"]) == ("/srv", "nobody")
    assert cfg["Labels"] == {"a": "b", "c d": "e"} and cfg["Volumes"] == {"/data": {}}
    assert img.config["comment"] == "hello" and img.diff_ids == [sha(rootfs)]
    with pytest.raises(InvalidParameter, match="RUN is not a valid change command"):
        importer.import_rootfs(store, io.BytesIO(rootfs), changes=["RUN true"])


def test_many_layers_mount_past_the_option_page(store, tmp_path):
    layers = [layer_tar([(f"f{i:03d}", "file", str(i), 0o644)]) for i in range(110)]
    cfg = image_config([sha(l) for l in layers])
    load(store, write_archive(tmp_path / "many.tar", [(cfg, layers, ["many:1"])]))
    merged = store.mount_rootfs("deep", store.get("many:1"))
    assert len(os.listdir(merged)) == 110
    assert open(os.path.join(merged, "f000")).read() == "0"
    opts = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", merged], capture_output=True, text=True).stdout
    assert "lowerdir=l/" in opts  # mounted with short relative paths from the forked helper


def test_reference_parsing():
    assert str(reference.parse("docker.io/library/busybox:1.36")) == "busybox:1.36"
    assert reference.parse("index.docker.io/foo/bar").repo == "foo/bar"
    assert reference.parse("localhost:5000/foo/bar:v1").tagged == "localhost:5000/foo/bar:v1"
    assert reference.parse("busybox", default_tag=True).tagged == "busybox:latest"
    assert reference.parse("busybox").full_name() == "docker.io/library/busybox"
    for bad in ("UPPER", "a:b:c", "", "x@sha256:short", "foo/", "-x"):
        with pytest.raises(InvalidParameter):
            reference.parse(bad)
    assert reference.matches("busy*", "busybox:latest")
    assert reference.matches("busybox:lat*", "busybox:latest")
    assert not reference.matches("*", "foo/bar:1")
    assert reference.matches("*/*", "foo/bar:1")


def test_tagging_an_image_with_the_tag_it_has_rewrites_nothing(store):
    """A cached rebuild tags the same image again: repositories.json stays as it is (as moby's reference
    store), LastTagTime still moves; a tag that moves is written."""
    load(store, busybox_tar())
    image_id = busybox_image_id()
    store.tag(image_id, "again:1")
    before = os.stat(store.repos_path).st_ino
    last = store.get(image_id).meta["LastTagTime"]
    assert store.tag(image_id, "again:1") is None
    assert os.stat(store.repos_path).st_ino == before
    assert store.get(image_id).meta["LastTagTime"] >= last
    store.tag(image_id, "again:2")
    assert os.stat(store.repos_path).st_ino != before
