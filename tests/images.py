"""Test images, built here and cached: busybox (from Debian's busybox-static) and Debian with python3.

Both come out as `docker save`-style tarballs ready for `docker load`. They are
cached under $DOCKYARD_TEST_CACHE (default /var/cache/dockyard-tests), keyed by
their recipe, and rebuilt only when the recipe changes. The busybox image is
made with tarfile from fixed metadata, so the same busybox binary always gives
the same image ID. `write_archive` also builds archives of any layers, in the
docker (manifest.json) or OCI (index.json) layout, for the loader's tests.
"""

from __future__ import annotations

import fcntl
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

RECIPE_VERSION = "1"
FIXED_MTIME = 1704067200  # 2024-01-01T00:00:00Z: no build time leaks into the image
CREATED = "2024-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BUSYBOX_APPLETS = (
    "[",
    "ash",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "dmesg",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "free",
    "grep",
    "head",
    "hostname",
    "httpd",
    "id",
    "ifconfig",
    "insmod",
    "ip",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mknod",
    "modprobe",
    "mount",
    "mv",
    "nc",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "sysctl",
    "tail",
    "tee",
    "test",
    "top",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "uptime",
    "wc",
    "wget",
    "whoami",
    "xargs",
    "yes",
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"

PYTHON_SUITE = "bookworm"
PYTHON_PACKAGES = ("python3",)


def extract(tar: tarfile.TarFile, member: str | tarfile.TarInfo) -> bytes:
    """The bytes of a regular file in a tar (which these helpers wrote themselves)."""
    fh = tar.extractfile(member)
    if fh is None:
        raise ValueError(f"{member}: not a regular file in the tar")
    return fh.read()


def cache_dir() -> Path:
    path = Path(os.environ.get("DOCKYARD_TEST_CACHE") or "/var/cache/dockyard-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def _cached(name: str, recipe: dict, build) -> Path:
    """Path of the cached artefact for `recipe`, running build(tmp_path) under a lock if missing."""
    base = cache_dir()
    final = base / f"{name}-{_key(recipe)}.tar"
    if final.exists():
        return final
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        tmp = base / f".{final.name}.{os.getpid()}.tmp"
        try:
            build(tmp)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
    return final


# -- generic archive writer --------------------------------------------------------------


_DEVICE_TYPES = {"chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def _tarinfo(
    name: str, kind: str = "file", size: int = 0, mode: int = 0o644, link: str = "", mtime: int = FIXED_MTIME
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, link
    elif kind in _DEVICE_TYPES:
        info.type = _DEVICE_TYPES[kind]
    else:
        info.size = size
    return info


def layer_tar(entries) -> bytes:
    """An uncompressed layer from [(name, kind, payload, mode[, xattrs])].

    kind: file (payload: data), dir, symlink/hardlink (payload: target), chardev/blockdev
    (payload: (major, minor)) or fifo; xattrs: {name: bytes}, written as SCHILY.xattr.* PAX headers.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name, kind, payload, mode = entry[:4]
            xattrs = entry[4] if len(entry) > 4 else {}
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info = _tarinfo(name, "file", len(data), mode)
            elif kind in ("symlink", "hardlink"):
                info, data = _tarinfo(name, kind, mode=mode, link=payload), None
            else:
                info, data = _tarinfo(name, kind, mode=mode), None
                if kind in ("chardev", "blockdev"):
                    info.devmajor, info.devminor = payload
            info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def write_members(out, members) -> Path:
    """An archive holding exactly [(name, bytes)] as regular files, in order (for hand-made manifests)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_tarinfo(name, size=len(data)), io.BytesIO(data))
    Path(out).write_bytes(raw.getvalue())
    return Path(out)


def oci_manifest(config: bytes, layer_blobs) -> bytes:
    """An OCI image manifest for config and (uncompressed) layer blobs, as the archive writers make it."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + _sha(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + _sha(b), "size": len(b)}
                for b in layer_blobs
            ],
        }
    ).encode()


def image_config(diff_ids, cmd=("sh",), env=(PATH_ENV,), extra_config=None, history=None) -> bytes:
    config = {"Env": list(env), "Cmd": list(cmd)}
    config.update(extra_config or {})
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history or [{"created": CREATED, "created_by": "dockyard tests"} for _ in diff_ids],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_archive(out, images, layout: str = "docker", gzip_layers: bool = False, gzip_outer: bool = False):
    """Write a loadable archive. images: [(config_bytes, [layer_tar_bytes], [tags])].

    layout "docker": legacy `docker save` (manifest.json, <id>/layer.tar, repositories);
    layout "oci": OCI image layout (oci-layout, index.json, blobs/) without manifest.json.
    Layer blobs are gzip'd when gzip_layers; the whole archive when gzip_outer.
    """

    def add(tar, name, data):
        tar.addfile(_tarinfo(name, size=len(data)), io.BytesIO(data))

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()
        manifest: list[dict] = []
        repositories: dict[str, dict[str, str]] = {}
        index: list[dict] = []
        if layout == "oci":
            tar.addfile(_tarinfo("blobs", "dir", mode=0o755))
            tar.addfile(_tarinfo("blobs/sha256", "dir", mode=0o755))
        for config, layers, tags in images:
            paths, descs = [], []
            for layer in layers:
                blob = gzip.compress(layer, mtime=0) if gzip_layers else layer
                digest = _sha(blob)
                path = f"blobs/sha256/{digest}" if layout == "oci" else f"{_sha(layer)}/layer.tar"
                if path not in seen:
                    if layout != "oci":
                        tar.addfile(_tarinfo(_sha(layer), "dir", mode=0o755))
                    add(tar, path, blob)
                    seen.add(path)
                paths.append(path)
                media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
                descs.append({"mediaType": media, "digest": "sha256:" + digest, "size": len(blob)})
            cfg_hex = _sha(config)
            if layout == "oci":
                add(tar, f"blobs/sha256/{cfg_hex}", config)
                man = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": "sha256:" + cfg_hex,
                            "size": len(config),
                        },
                        "layers": descs,
                    }
                ).encode()
                add(tar, f"blobs/sha256/{_sha(man)}", man)
                desc = {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + _sha(man),
                    "size": len(man),
                }
                for tag in tags or [None]:
                    d = dict(desc)
                    if tag:
                        d["annotations"] = {
                            "io.containerd.image.name": tag,
                            "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[-1],
                        }
                    index.append(d)
            else:
                add(tar, f"{cfg_hex}.json", config)
                manifest.append({"Config": f"{cfg_hex}.json", "RepoTags": list(tags) or None, "Layers": paths})
                for tag in tags:
                    repo, t = tag.rsplit(":", 1)
                    repositories.setdefault(repo, {})[t] = _sha(layers[-1]) if layers else cfg_hex
        if layout == "oci":
            add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": index}).encode())
        else:
            add(tar, "manifest.json", json.dumps(manifest).encode())
            add(tar, "repositories", json.dumps(repositories).encode())
    data = raw.getvalue()
    if gzip_outer:
        data = gzip.compress(data, mtime=0)
    Path(out).write_bytes(data)
    return Path(out)


# -- busybox ---------------------------------------------------------------------------------


def busybox_binary() -> Path:
    """/bin/busybox of Debian's busybox-static (apt-get download, cached)."""
    base = cache_dir() / "busybox-static"
    binary = base / "busybox"
    if binary.exists():
        return binary
    base.mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "busybox-static.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        work = Path(tempfile.mkdtemp(dir=base))
        try:
            proc = subprocess.run(["apt-get", "download", "busybox-static"], cwd=work, capture_output=True, text=True)
            if proc.returncode != 0:  # stale package lists: refresh once, then retry
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
                proc = subprocess.run(
                    ["apt-get", "download", "busybox-static"], cwd=work, capture_output=True, text=True
                )
            debs = glob.glob(str(work / "busybox-static_*.deb"))
            if proc.returncode != 0 or not debs:
                raise RuntimeError(f"apt-get download busybox-static failed: {proc.stderr.strip()}")
            fsys = subprocess.run(["dpkg-deb", "--fsys-tarfile", debs[0]], capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(fsys)) as tar:
                member = next(m for m in tar.getmembers() if m.name.lstrip("./") in ("bin/busybox", "usr/bin/busybox"))
                data = extract(tar, member)
            tmp = base / "busybox.tmp"
            tmp.write_bytes(data)
            os.chmod(tmp, 0o755)
            os.replace(tmp, binary)
            (base / "deb-name").write_text(os.path.basename(debs[0]) + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return binary


def busybox_layer(binary: bytes) -> bytes:
    entries = [
        ("bin", "dir", None, 0o755),
        ("bin/busybox", "file", binary, 0o755),
        *[(f"bin/{a}", "symlink", "busybox", 0o777) for a in BUSYBOX_APPLETS],
        ("dev", "dir", None, 0o755),
        ("etc", "dir", None, 0o755),
        ("etc/passwd", "file", PASSWD, 0o644),
        ("etc/group", "file", GROUP, 0o644),
        ("home", "dir", None, 0o755),
        ("proc", "dir", None, 0o555),
        ("root", "dir", None, 0o700),
        ("sys", "dir", None, 0o555),
        ("tmp", "dir", None, 0o1777),
        ("usr", "dir", None, 0o755),
        ("usr/bin", "dir", None, 0o755),
        ("var", "dir", None, 0o755),
        ("var/www", "dir", None, 0o755),
    ]
    return layer_tar(entries)


def busybox_tar(tag: str = "busybox:latest") -> Path:
    """docker-archive tarball of a busybox image tagged `tag` (cached)."""
    recipe = {
        "v": RECIPE_VERSION,
        "applets": BUSYBOX_APPLETS,
        "passwd": PASSWD,
        "group": GROUP,
        "created": CREATED,
        "tag": tag,
    }

    def build(tmp: Path):
        layer = busybox_layer(busybox_binary().read_bytes())
        config = image_config(
            ["sha256:" + _sha(layer)], history=[{"created": CREATED, "created_by": "dockyard tests: busybox-static"}]
        )
        write_archive(tmp, [(config, [layer], [tag])])

    return _cached("busybox", recipe, build)


def busybox_image_id(path: Path | None = None) -> str:
    """'sha256:<id>' of the image inside a busybox_tar()."""
    with tarfile.open(path or busybox_tar()) as tar:
        manifest = json.loads(extract(tar, "manifest.json"))
        return "sha256:" + manifest[0]["Config"].split(".")[0].split("/")[-1]


# -- Debian + python3 ---------------------------------------------------------------------


def python_tar(tag: str = "pyweb:latest") -> Path:
    """docker-archive of a minimal Debian bookworm with python3 (mmdebstrap; cached, slow once)."""
    from tests.hosts import rootfs as hostroot

    recipe = {
        "v": RECIPE_VERSION,
        "suite": PYTHON_SUITE,
        "packages": PYTHON_PACKAGES,
        "dpkg": hostroot.DPKG_OPTIONS,
        "tag": tag,
    }

    def build(tmp: Path):
        if not shutil.which("mmdebstrap"):
            raise RuntimeError("mmdebstrap is needed to build the python test image")
        work = Path(tempfile.mkdtemp(dir=cache_dir()))
        try:
            rootfs_tar = work / "rootfs.tar"
            cmd = [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(PYTHON_PACKAGES),
                "--format=tar",
                *[f"--dpkgopt={o}" for o in hostroot.DPKG_OPTIONS],
                *[f"--aptopt={o}" for o in hostroot.host_apt_options()],
                PYTHON_SUITE,
                str(rootfs_tar),
                *hostroot.mirror_lines(PYTHON_SUITE, updates=False),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            layer = rootfs_tar.read_bytes()
            config = image_config(
                ["sha256:" + _sha(layer)],
                cmd=("python3",),
                history=[{"created": CREATED, "created_by": "mmdebstrap minbase python3"}],
            )
            write_archive(tmp, [(config, [layer], [tag])])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return _cached("python", recipe, build)


if __name__ == "__main__":  # pre-build from CI: python3 -m tests.images
    print(busybox_tar())
