"""Hostile images against a real engine (image API over its socket, real data-root, real overlay mounts).

Every test builds the hostile input itself and checks three things: the attack fails (a 400 with a
clear message, or the content is kept as inert layer content), nothing outside the data-root changed
(the host files the attack aims at, plus an mtime/hash listing of a decoy directory made for the
test), nothing was written inside the data-root by a refused load or pull, and the engine still
answers /_ping.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import socket
import stat
import struct
import tarfile
import threading
from pathlib import Path

import pytest

from dockyard.engine.errors import InvalidParameter, NotFound
from tests.engine import images_helper
from tests.images import image_config, layer_tar, oci_manifest, write_archive, write_members

images_engine = images_helper.images_engine  # the fixture, used by name below

HOST_TARGETS = ("/etc/shadow", "/etc/passwd", "/etc/dockyard/server-key.pem", "/etc")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- watching the host and the data-root ---------------------------------------------------------


def listing(root: str, skip: tuple[str, ...] = (), dir_mtimes: bool = True) -> dict[str, tuple]:
    """{relative path: (type, mode, size, mtime_ns, sha256 of regular files, link target)} under root.

    Without dir_mtimes, directories are listed without size and mtime (a temp entry made and removed
    again changes them, and is not "something written").
    """
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            digest = link = ""
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                link = os.readlink(path)
            if stat.S_ISDIR(st.st_mode) and not dir_mtimes:
                out[rel] = (stat.S_IFDIR, st.st_mode)
                continue
            out[rel] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns, digest, link)
    return out


def host_state(decoy: Path) -> dict:
    state: dict = {"decoy": listing(str(decoy))}
    for path in HOST_TARGETS:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            state[path] = None
            continue
        digest = ""
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        state[path] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, digest)
    return state


def data_state(e) -> dict:
    """What the engine has stored (temp dirs aside: a request body is spooled there and removed)."""
    return listing(e.data_root, skip=("image/tmp",), dir_mtimes=False)


@pytest.fixture
def decoy(tmp_path):
    """A host directory standing in for what an attacker would want: files, a fake etc/shadow, a subdir."""
    d = tmp_path / "decoy"
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "shadow").write_text("root:decoy-hash:19000:0:99999:7:::\n")
    (d / "victim").write_text("do not delete\n")
    (d / "sub").mkdir()
    (d / "sub" / "key.pem").write_text("decoy key\n")
    os.utime(d / "victim", (1_600_000_000, 1_600_000_000))
    return d


@pytest.fixture
def watch(images_engine, decoy):
    """Checks after the test that host, decoy and (unless a test updates it) the engine are as before."""
    e = images_engine
    before = host_state(decoy)
    yield e
    assert host_state(decoy) == before, "something outside the data-root changed"
    assert ping(e) == (200, b"OK")


# -- talking to the engine -------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.unix_path)


def api(e, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = _UnixConnection(e.socket_path)
    try:
        headers = {"Content-Type": "application/x-tar"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ping(e) -> tuple[int, bytes]:
    return api(e, "GET", "/_ping")


def load(e, archive: Path) -> tuple[int, str]:
    status, body = api(e, "POST", "/images/load?quiet=1", archive.read_bytes())
    return status, body.decode("utf-8", "replace")


def message(body: str) -> str:
    try:
        return json.loads(body)["message"]
    except (ValueError, KeyError):
        return body


def assert_refused(e, archive: Path, *needles: str) -> str:
    """Load is a 400 naming the problem, and the data-root is exactly as before."""
    before = data_state(e)
    status, body = load(e, archive)
    msg = message(body)
    assert status == 400, (status, body)
    assert "\n" not in msg.strip() and all(n in msg for n in needles), msg
    assert data_state(e) == before, "a refused load wrote to the data-root"
    return msg


# -- the attack from the issue: a diff ID that is a path into another layer's content -----------------


def _planted_layer(links: dict[str, str]) -> bytes:
    """A layer whose content holds, for each dir name, a meta.json like the layer store's, with `link`."""
    entries: list[tuple] = []
    for name, link in links.items():
        meta = json.dumps({"diff_id": "sha256:" + "0" * 64, "size": 1, "link": link})
        entries += [(name, "dir", None, 0o755), (name + "/diff", "dir", None, 0o755)]
        entries.append((name + "/meta.json", "file", meta, 0o644))
    return layer_tar(entries)


def test_diff_id_naming_a_path_inside_a_layer_is_refused(watch, decoy, tmp_path):
    e = watch
    inner = _planted_layer({"x": "/etc"})
    hexid = sha(inner)[7:]
    good = tmp_path / "good.tar"
    write_archive(good, [(image_config([sha(inner)]), [inner], ["carrier:1"])])
    assert load(e, good)[0] == 200  # the carrier layer itself is fine: it is only content
    for diff_id in ("sha256:%s/diff/x" % hexid, "sha256:%s/../%s/diff/x" % (hexid, hexid)):
        evil = tmp_path / "evil.tar"
        write_archive(evil, [(image_config([diff_id]), [inner], ["evil:1"])])
        assert_refused(e, evil, "invalid diff ID", "64 lowercase hex digits")
    with pytest.raises(NotFound):
        e.containers.create("c1", "evil:1")  # no image: no container can mount host /etc
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "lowerdir=/etc" in line]


def test_config_planted_by_an_older_engine_cannot_mount_or_unlink_host_paths(watch, decoy, tmp_path):
    """Defence in depth: crafted configs already in the data-root (stored before digests were checked)."""
    e = watch
    # x: the overlay lowerdir that used to be mounted (host /etc); y: what rmi used to unlink (the decoy)
    inner = _planted_layer({"x": "/etc", "y": str(decoy / "victim")})
    good = tmp_path / "good.tar"
    write_archive(good, [(image_config([sha(inner)]), [inner], ["carrier:1"])])
    assert load(e, good)[0] == 200
    for name in ("x", "y"):
        raw = image_config([sha(inner) + "/diff/" + name])
        Path(e.data_root, "image", "configs", sha(raw)[7:] + ".json").write_bytes(raw)
        e.images.tag(sha(raw), "evil:" + name)
    overlay_before = os.listdir(Path(e.data_root, "overlay"))
    with pytest.raises(InvalidParameter, match="invalid diff ID"):
        e.containers.create("c1", "evil:x")  # used to mount host /etc as the container's /
    assert os.listdir(Path(e.data_root, "overlay")) == overlay_before  # nothing made for the container
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "lowerdir=/etc" in line]
    status, body = api(e, "GET", "/images/evil:x/json")
    assert status == 400 and "invalid diff ID" in message(body.decode())
    assert api(e, "GET", "/images/json")[0] == 200  # listing still works; the crafted images add 0 bytes
    for name in ("x", "y"):
        status, body = api(e, "DELETE", "/images/evil:" + name)
        assert status == 200, body
    assert (decoy / "victim").exists()
    assert e.images.layers.exists(sha(inner))  # the carrier's layer is untouched (its image still uses it)


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:../../../../etc",
        "sha256:" + "A" * 64,  # uppercase
        "sha256:" + "a" * 63,  # short
        "sha256:" + "a" * 65,  # long
        "sha256:" + "a" * 64 + "\n",  # what a `$` anchor lets through
        "sha256:" + "a" * 64 + "/",
        "sha512:" + "a" * 128,
        "/etc/passwd",
        "",
        7,
    ],
)
def test_malformed_diff_ids_are_refused(watch, tmp_path, bad):
    layer = layer_tar([("f", "file", "x", 0o644)])
    archive = tmp_path / "bad.tar"
    write_archive(archive, [(image_config([bad]), [layer], ["bad:1"])])
    assert_refused(watch, archive, "invalid diff ID")


def _oci_archive(path: Path, config: bytes, layers: list[bytes], mutate=None) -> Path:
    """An OCI layout; mutate(index, manifest) may change the JSON documents before they are written."""
    manifest = json.loads(oci_manifest(config, layers))
    index: dict = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json"}]}
    if mutate:
        mutate(index, manifest)
    man = json.dumps(manifest).encode()
    index["manifests"][0].setdefault("digest", sha(man))
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", json.dumps(index).encode())]
    members += [("blobs/sha256/" + sha(b)[7:], b) for b in [config, man] + layers]
    return write_members(path, members)


@pytest.mark.parametrize(
    "where, bad, needle",
    [
        ("index", "sha256:../../../etc/passwd", "invalid manifest digest"),
        ("index", "sha256:" + "F" * 64, "invalid manifest digest"),
        ("config", "sha256:../" + "a" * 61, "invalid config digest"),
        ("layer", "sha256:" + "a" * 64 + "/../../x", "invalid layer digest"),
        ("layer", "sha256:" + "a" * 10, "invalid layer digest"),
    ],
)
def test_malformed_oci_digests_are_refused(watch, tmp_path, where, bad, needle):
    layer = layer_tar([("f", "file", "x", 0o644)])
    config = image_config([sha(layer)])

    def mutate(index, manifest):
        if where == "index":
            index["manifests"][0]["digest"] = bad
        elif where == "config":
            manifest["config"]["digest"] = bad
        else:
            manifest["layers"][0]["digest"] = bad

    assert_refused(watch, _oci_archive(tmp_path / "oci.tar", config, [layer], mutate), needle)


@pytest.mark.parametrize(
    "field, bad, needle",
    [
        ("Config", "../../../etc/passwd", "points outside the archive"),
        ("Config", "/etc/passwd", "points outside the archive"),
        ("Layers", "../outside/layer.tar", "points outside the archive"),
        ("Layers", "blobs/sha256/../../etc/shadow", "points outside the archive"),
        ("Layers", "blobs/sha512/" + "a" * 128, "not blobs/sha256/<digest>"),
        ("Layers", "blobs/sha256/" + "a" * 64 + "/x", "not blobs/sha256/<digest>"),
    ],
)
def test_manifest_entries_pointing_outside_the_archive_are_refused(watch, tmp_path, field, bad, needle):
    layer = layer_tar([("f", "file", "x", 0o644)])
    config = image_config([sha(layer)])
    entry = {"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}
    entry[field] = bad if field == "Config" else [bad]
    members = [("c.json", config), ("l.tar", layer), ("manifest.json", json.dumps([entry]).encode())]
    # the archive even holds members under the names the manifest points at, as tar allows
    members.append((bad.lstrip("/"), config if field == "Config" else layer))
    assert_refused(watch, write_members(tmp_path / "out.tar", members), needle)


def test_blobs_that_do_not_match_their_digest_are_refused(watch, tmp_path):
    e = watch
    layer = layer_tar([("f", "file", "x", 0o644)])
    config = image_config([sha(layer)])
    other = image_config([sha(layer)], cmd=("evil",))
    # a docker-archive whose content-addressed config path holds other bytes
    entry = {"Config": "blobs/sha256/" + sha(config)[7:], "RepoTags": ["x:1"], "Layers": ["l.tar"]}
    members = [("blobs/sha256/" + sha(config)[7:], other), ("l.tar", layer)]
    members.append(("manifest.json", json.dumps([entry]).encode()))
    assert_refused(e, write_members(tmp_path / "a.tar", members), "does not match its digest")
    # an OCI layout whose layer blob is stored under another digest (it still matches the diff ID)
    gz = gzip.compress(layer, mtime=0)

    def swap_layer(index, manifest):
        manifest["layers"][0]["digest"] = sha(gz)

    arc = _oci_archive(tmp_path / "b.tar", config, [layer], swap_layer)
    with tarfile.open(arc) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = [(n if n != "blobs/sha256/" + sha(layer)[7:] else "blobs/sha256/" + sha(gz)[7:], d) for n, d in members]
    members.append(("blobs/sha256/" + sha(gz)[7:] + "-unused", gz))
    assert_refused(e, write_members(tmp_path / "c.tar", members), "does not match its digest")


def test_a_layer_already_stored_is_still_verified(watch, tmp_path):
    e = watch
    real = layer_tar([("f", "file", "real", 0o644)])
    fake = layer_tar([("f", "file", "fake", 0o644)])
    good = tmp_path / "good.tar"
    write_archive(good, [(image_config([sha(real)]), [real], ["real:1"])])
    assert load(e, good)[0] == 200
    evil = tmp_path / "evil.tar"
    write_archive(evil, [(image_config([sha(real)], cmd=("evil",)), [fake], ["evil:1"])])
    assert_refused(e, evil, "invalid diffID", sha(fake))


def test_a_failed_load_removes_the_layers_it_added(watch, tmp_path):
    e = watch
    first = layer_tar([("a", "file", "a", 0o644)])
    second = layer_tar([("b", "file", "b", 0o644)])
    evil = tmp_path / "evil.tar"
    # the second layer's content does not match the diff ID the config gives it
    write_archive(evil, [(image_config([sha(first), sha(b"nope")]), [first, second], ["x:1"])])
    assert_refused(e, evil, "invalid diffID")
    assert not e.images.layers.exists(sha(first))


# -- layer content that looks like engine metadata, or like a way out ---------------------------------------


def test_layer_metadata_look_alikes_stay_content(watch, tmp_path):
    e = watch
    lookalike = json.dumps({"diff_id": "sha256:" + "1" * 64, "size": 0, "link": "/etc"})
    layer = layer_tar(
        [
            ("meta.json", "file", lookalike, 0o644),
            ("skeleton.gz", "file", "not a skeleton", 0o644),
            ("layer.tar", "file", "not a tar", 0o644),
            ("diff", "dir", None, 0o755),
            ("diff/meta.json", "file", lookalike, 0o644),
            ("l", "dir", None, 0o755),
            ("l/ABCDEFGHIJKLMNOPQRST", "symlink", "/etc", 0o777),
        ]
    )
    archive = tmp_path / "look.tar"
    write_archive(archive, [(image_config([sha(layer)]), [layer], ["look:1"])])
    assert load(e, archive)[0] == 200
    stored = e.images.layers.get(sha(layer))
    meta = json.loads(Path(stored.dir, "meta.json").read_text())
    assert meta["diff_id"] == sha(layer) and meta["link"] != "/etc"
    assert Path(stored.diff_dir, "meta.json").read_text() == lookalike  # content, where content lives
    link = Path(e.data_root, "image", "l", stored.link)
    assert os.readlink(link) == "../layers/%s/diff" % sha(layer)[7:]
    c = e.containers.create("c1", "look:1")
    options = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if c.rootfs in line]
    assert options and "/etc" not in options[0].split(" - ")[1].replace(e.data_root, "")
    assert os.readlink(Path(c.rootfs, "l", "ABCDEFGHIJKLMNOPQRST")) == "/etc"  # a link inside the rootfs
    status, saved = api(e, "GET", "/images/look:1/get")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        assert tar.extractfile("blobs/sha256/" + sha(layer)[7:]).read() == layer


def test_setuid_files_and_device_nodes_are_inert_content(watch, tmp_path):
    e = watch
    root_dev = os.stat("/").st_dev
    layer = layer_tar(
        [
            ("bin", "dir", None, 0o755),
            ("bin/rootshell", "file", "#!/bin/sh\ntouch /tmp/pwned\n", 0o4755),
            ("dev", "dir", None, 0o755),
            ("dev/hostdisk", "blockdev", (os.major(root_dev), os.minor(root_dev)), 0o666),
            ("dev/zero", "chardev", (1, 5), 0o666),
            ("dev/pipe", "fifo", None, 0o666),  # opening it to read would hang the engine
        ]
    )
    archive = tmp_path / "dev.tar"
    write_archive(archive, [(image_config([sha(layer)]), [layer], ["dev:1"])])
    assert load(e, archive)[0] == 200
    diff = Path(e.images.layers.get(sha(layer)).diff_dir)
    st = os.lstat(diff / "bin" / "rootshell")
    assert st.st_mode & 0o7777 == 0o4755 and st.st_uid == 0  # kept as the image has it ...
    disk = os.lstat(diff / "dev" / "hostdisk")
    assert stat.S_ISBLK(disk.st_mode) and disk.st_rdev == os.makedev(os.major(root_dev), os.minor(root_dev))
    assert stat.S_ISCHR(os.lstat(diff / "dev" / "zero").st_mode)
    assert stat.S_ISFIFO(os.lstat(diff / "dev" / "pipe").st_mode)
    assert not Path("/tmp/pwned").exists()
    # ... but no host user can reach it: the image store is closed to everyone but root
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                os.stat(diff / "bin" / "rootshell")
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "a host user can reach layer content"
    # save gives the layer back byte for byte: nodes are written as headers, never opened or read
    status, saved = api(e, "GET", "/images/dev:1/get")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        assert tar.extractfile("blobs/sha256/" + sha(layer)[7:]).read() == layer


@pytest.mark.parametrize(
    "entries, needle",
    [
        ([("shadow", "hardlink", "../../../../../etc/shadow", 0o644)], "contains '..'"),
        ([("shadow", "hardlink", "/etc/shadow", 0o644)], "is absolute"),
        ([("up", "symlink", "../../../../../../etc", 0o777)], "points outside the destination"),
        ([("d", "dir", None, 0o755), ("d/up", "symlink", "../..", 0o777)], "points outside the destination"),
        ([("../../../../../tmp/escaped", "file", "x", 0o644)], "contains '..'"),
        ([("/etc/evil", "file", "x", 0o644)], "is absolute"),
        # a hard link through a symlinked directory is resolved inside the layer: /etc is not there
        ([("h", "symlink", "/etc", 0o777), ("shadow", "hardlink", "h/shadow", 0o644)], "not found"),
    ],
)
def test_links_and_names_out_of_the_layer_are_refused(watch, tmp_path, entries, needle):
    layer = layer_tar(entries)
    archive = tmp_path / "links.tar"
    write_archive(archive, [(image_config([sha(layer)]), [layer], ["links:1"])])
    assert_refused(watch, archive, needle)


def test_absolute_symlinks_are_contained_in_the_layer(watch, decoy, tmp_path):
    """A link to a host path is kept as a link; writing through it lands inside the layer, if anywhere."""
    e = watch
    layer = layer_tar(
        [
            ("host", "symlink", str(decoy), 0o777),
            ("host/victim", "file", "overwritten", 0o644),
            ("etc", "symlink", "/etc", 0o777),
        ]
    )
    archive = tmp_path / "abs.tar"
    write_archive(archive, [(image_config([sha(layer)]), [layer], ["abs:1"])])
    status, body = load(e, archive)
    assert status in (200, 400), body
    if status == 200:
        diff = Path(e.images.layers.get(sha(layer)).diff_dir)
        assert os.readlink(diff / "host") == str(decoy)
        assert (diff / decoy.relative_to("/") / "victim").read_text() == "overwritten"
    # the watch fixture checks the decoy's victim and the host's /etc are untouched


def test_xattrs_only_user_capabilities_and_acls_are_kept(watch, tmp_path):
    e = watch
    cap = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # VFS_CAP v2, effective, cap_net_bind_service
    xattrs = {
        "security.capability": cap,
        "user.note": b"kept",
        "trusted.overlay.redirect": b"/etc",
        "trusted.overlay.opaque": b"y",
        "trusted.overlay.metacopy": b"",
        "security.selinux": b"system_u:object_r:shadow_t:s0",
    }
    layer = layer_tar([("d", "dir", None, 0o755, xattrs), ("d/ping", "file", "ELF?", 0o755, xattrs)])
    archive = tmp_path / "x.tar"
    write_archive(archive, [(image_config([sha(layer)]), [layer], ["x:1"])])
    assert load(e, archive)[0] == 200
    diff = Path(e.images.layers.get(sha(layer)).diff_dir)
    for path in (diff / "d", diff / "d" / "ping"):
        names = set(os.listxattr(path))
        assert not {n for n in names if n.startswith("trusted.")}, names
        assert "security.selinux" not in names or os.getxattr(path, "security.selinux") != xattrs["security.selinux"]
        assert os.getxattr(path, "user.note") == b"kept"
    assert os.getxattr(diff / "d" / "ping", "security.capability") == cap


# -- a registry that lies ---------------------------------------------------------------------------------


class FakeRegistry:
    """A distribution-API server on 127.0.0.1 answering from a dict: path -> (status, headers, body)."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: list[str] = []
        routes, hits = self.routes, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                hits.append(path)
                status, headers, body = routes.get(path, (404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def blob(self, repo: str, data: bytes, digest: str | None = None) -> str:
        digest = digest or sha(data)
        self.routes[f"/v2/{repo}/blobs/{digest}"] = (200, {}, data)
        return digest

    def manifest(self, repo: str, ref: str, body: bytes, digest_header: str | None = None) -> None:
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if digest_header:
            headers["Docker-Content-Digest"] = digest_header
        self.routes[f"/v2/{repo}/manifests/{ref}"] = (200, headers, body)

    def image(self, repo: str, layers: list[bytes], tag: str = "1") -> tuple[bytes, bytes]:
        """Serve a correct image; -> (config, manifest bytes)."""
        config = image_config([sha(layer) for layer in layers])
        self.blob(repo, config)
        for layer in layers:
            self.blob(repo, layer)
        man = oci_manifest(config, layers)
        self.manifest(repo, tag, man, sha(man))
        self.manifest(repo, sha(man), man, sha(man))
        return config, man

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry():
    reg = FakeRegistry()
    yield reg
    reg.close()


def assert_pull_fails(e, ref: str, *needles: str) -> str:
    before = data_state(e)
    p = e.docker("pull", ref, check=False, timeout=60)
    err = p.stderr.decode() + p.stdout.decode()
    assert p.returncode != 0 and all(n in err for n in needles), err
    assert data_state(e) == before, "a failed pull wrote to the data-root"
    return err


def test_a_good_image_from_the_fake_registry_pulls(watch, fake_registry):
    """The fake registry is good enough to pull from: the failures below are the engine's checks."""
    layer = layer_tar([("f", "file", "x", 0o644)])
    config, man = fake_registry.image("ok/img", [layer])
    out = watch.docker("pull", f"{fake_registry.host}/ok/img:1").stdout.decode()
    assert f"Digest: {sha(man)}" in out
    assert watch.images.get(f"{fake_registry.host}/ok/img:1").id == sha(config)


def test_a_manifest_whose_bytes_do_not_match_the_header_digest_is_refused(watch, fake_registry):
    reg = fake_registry
    layer = layer_tar([("f", "file", "x", 0o644)])
    _, man = reg.image("lie/hdr", [layer])
    other = oci_manifest(image_config([sha(layer)], cmd=("evil",)), [layer])
    reg.manifest("lie/hdr", "1", other, sha(man))  # the header names the good manifest, the body is another
    assert_pull_fails(watch, f"{reg.host}/lie/hdr:1", "manifest verification failed", sha(other))
    # by digest: the registry answers the digest with other bytes (and a header that agrees with the request)
    reg.manifest("lie/hdr", sha(man), other, sha(man))
    assert_pull_fails(watch, f"{reg.host}/lie/hdr@{sha(man)}", "manifest verification failed")


def test_blobs_that_do_not_match_their_digest_are_refused_and_nothing_is_kept(watch, fake_registry):
    reg = fake_registry
    first = layer_tar([("a", "file", "a", 0o644)])
    second = layer_tar([("b", "file", "b", 0o644)])
    config, _ = reg.image("lie/blob", [first, second])
    reg.blob("lie/blob", layer_tar([("b", "file", "evil", 0o644)]), sha(second))  # second layer lies
    assert_pull_fails(watch, f"{reg.host}/lie/blob:1", "failed verification")
    assert not watch.images.layers.exists(sha(first))  # the first, good layer went again
    reg.blob("lie/blob", second)
    lie = image_config([sha(first), sha(second)], cmd=("xx",))  # as long as the real one ("sh")
    assert len(lie) == len(config)
    reg.blob("lie/blob", lie, sha(config))  # the config lies
    assert_pull_fails(watch, f"{reg.host}/lie/blob:1", "failed verification")


def test_a_blob_longer_than_its_descriptor_is_cut_off(watch, fake_registry):
    reg = fake_registry
    layer = layer_tar([("f", "file", "x" * 100_000, 0o644)])
    config = image_config([sha(layer)])
    reg.blob("big/blob", config)
    reg.blob("big/blob", layer)
    man = json.loads(oci_manifest(config, [layer]))
    man["layers"][0]["size"] = 1000
    body = json.dumps(man).encode()
    reg.manifest("big/blob", "1", body)
    assert_pull_fails(watch, f"{reg.host}/big/blob:1", "larger than its descriptor")
    del man["layers"][0]["size"]  # no size: nothing would bound the download
    reg.manifest("big/blob", "1", json.dumps(man).encode())
    assert_pull_fails(watch, f"{reg.host}/big/blob:1", "missing or bad layer size")
    man = json.loads(oci_manifest(config, [layer]))
    man["config"]["size"] = 9 << 20  # refused before a byte of it is fetched
    reg.manifest("big/blob", "1", json.dumps(man).encode())
    hits = len(reg.hits)
    assert_pull_fails(watch, f"{reg.host}/big/blob:1", "image config is too large")
    assert reg.hits[hits:] == ["/v2/big/blob/manifests/1"]


def test_oversized_manifests_and_token_answers_are_refused(watch, fake_registry):
    reg = fake_registry
    huge = b'{"schemaVersion":2,"pad":"' + b"x" * (5 << 20) + b'"}'
    reg.manifest("big/man", "1", huge)
    assert_pull_fails(watch, f"{reg.host}/big/man:1", "too large")
    realm = f"http://{reg.host}/token"
    reg.routes["/v2/big/tok/manifests/1"] = (401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'}, b"")
    reg.routes["/token"] = (200, {}, b'{"token":"' + b"t" * (2 << 20) + b'"}')
    assert_pull_fails(watch, f"{reg.host}/big/tok:1", "too large")


@pytest.mark.parametrize(
    "where, bad",
    [("layer", "sha256:../../../../etc/shadow"), ("config", "sha256:" + "A" * 64), ("layer", "sha256:abc")],
)
def test_malformed_digests_in_a_registry_manifest_are_refused(watch, fake_registry, where, bad):
    reg = fake_registry
    layer = layer_tar([("f", "file", "x", 0o644)])
    config, _ = reg.image("bad/dig", [layer])
    man = json.loads(oci_manifest(config, [layer]))
    (man["layers"][0] if where == "layer" else man["config"])["digest"] = bad
    reg.manifest("bad/dig", "1", json.dumps(man).encode())
    assert_pull_fails(watch, f"{reg.host}/bad/dig:1", "invalid %s digest" % where)
    assert not [h for h in reg.hits if ".." in h or "/blobs/sha256:A" in h]  # never asked for


def test_malformed_digests_in_api_requests_are_refused(watch):
    e = watch
    status, body = api(e, "GET", "/images/sha256:..%2F..%2Fetc/json")
    assert status == 400 and "invalid reference format" in message(body.decode()), body
    # "sha256:AAAA..." is the name "sha256" with a tag, as in Docker: looked up as a tag, not found
    status, body = api(e, "GET", "/images/sha256:" + "A" * 64 + "/json")
    assert status == 404, body
    status, body = api(e, "DELETE", "/images/sha256:..%2F..%2F..%2Fetc%2Fshadow")
    assert status == 400, body
    status, body = api(e, "POST", "/images/create?fromImage=127.0.0.1:1/x&tag=sha256:" + "a" * 63)
    assert status == 400 and "invalid manifest digest" in message(body.decode()), body
