"""The vfs storage driver: an engine whose data-root cannot hold overlayfs upper dirs still runs containers.

The data-root is put inside an overlayfs mount (upper on a tmpfs), as in containers in containers: the
engine's start-up probe mount fails there and it falls back to copying images per container, saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.engine.runtime_helper import RuntimeEngine
from tests.images import image_config, layer_tar, write_archive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, containers)")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _umount_all(path):
    for _ in range(4):
        if subprocess.run(["umount", "-l", path], capture_output=True).returncode != 0:
            return


class EngineOnOverlay(RuntimeEngine):
    """A RuntimeEngine whose data-root lies inside an overlayfs mount made for it."""

    def __init__(self, extra_args=()):
        super().__init__()
        self.extra_args = list(extra_args)
        self.backing = self.dir / "backing"
        self.merged = self.dir / "ovl"
        self.mounts = []
        self.backing.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(self.backing)], check=True)
        self.mounts.append(str(self.backing))
        for name in ("lower", "upper", "work"):
            (self.backing / name).mkdir()
        self.merged.mkdir()
        opts = "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work".format(self.backing)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.merged)], check=True)
        self.mounts.insert(0, str(self.merged))
        self.data_root = self.merged / "data"
        self.data_root.mkdir()

    def argv(self):
        argv = super().argv()
        argv[argv.index("--data-root") + 1] = str(self.data_root)
        return argv + self.extra_args

    def cleanup(self):
        # Detach our mounts first (the engine keeps its own copies in its mount namespace until it
        # exits), so that the base cleanup's rmtree of self.dir removes every directory.
        for m in self.mounts:
            _umount_all(m)
        super().cleanup()


@pytest.fixture
def overlay_engine():
    eng = EngineOnOverlay()
    try:
        eng.start()
        eng.load_busybox()
        yield eng
    finally:
        eng.cleanup()  # also unmounts the overlay and tmpfs made for it


def _info(eng):
    return json.loads(eng.docker("info", "--format", "{{json .}}").stdout)


def test_engine_on_overlay_data_root_falls_back_to_vfs(overlay_engine):
    eng = overlay_engine
    info = _info(eng)
    assert info["Driver"] == "vfs"
    assert any("using the vfs storage driver" in w for w in info["Warnings"] or [])

    out = eng.docker("run", "--rm", "busybox", "sh", "-c", "echo hello > /hello && cat /hello").stdout
    assert out.strip() == "hello"

    # Files written in one container reach neither another container nor the image.
    eng.docker("create", "--name", "ctr-a", "busybox", "sh", "-c", "echo mine > /etc/leak; rm /bin/ls; cat /etc/leak")
    eng.docker("start", "-a", "ctr-a")
    probe = eng.docker("run", "--rm", "busybox", "sh", "-c", "cat /etc/leak; ls -d /bin/ls", check=False)
    assert "mine" not in probe.stdout and "/bin/ls" in probe.stdout
    layer_files = subprocess.run(
        ["grep", "-rl", "--include=leak", "mine", str(eng.data_root / "image")], capture_output=True, text=True
    )
    assert layer_files.stdout == ""

    # The container's own files survive stop/start (and an engine restart).
    eng.docker("start", "-a", "ctr-a")  # cat /etc/leak prints it again; rm of a missing /bin/ls fails quietly
    assert eng.docker("logs", "ctr-a").stdout.count("mine") == 2
    eng.restart()
    assert eng.docker("start", "-a", "ctr-a").stdout.strip() == "mine"
    inspect = json.loads(eng.docker("inspect", "ctr-a").stdout)[0]
    assert inspect["GraphDriver"]["Name"] == "vfs"
    rootfs = inspect["GraphDriver"]["Data"]["Dir"]
    assert rootfs.startswith(str(eng.data_root) + "/vfs/")

    # No fake diff/commit: a clear refusal.
    diff = eng.docker("diff", "ctr-a", check=False)
    assert diff.returncode != 0 and "vfs storage driver" in diff.stderr
    commit = eng.docker("commit", "ctr-a", "leaked:1", check=False)
    assert commit.returncode != 0 and "vfs storage driver" in commit.stderr

    eng.docker("rm", "ctr-a")
    assert not os.path.exists(os.path.dirname(rootfs))
    assert eng.docker("ps", "-aq").stdout.strip() == ""


def test_explicit_storage_driver_is_honoured():
    eng = EngineOnOverlay(["--storage-driver", "overlay2"])
    try:
        eng.start()
        info = _info(eng)
        assert info["Driver"] == "overlay2"
        assert not any("using the vfs storage driver" in w for w in info["Warnings"] or [])
        assert any("cannot be mounted there" in w for w in info["Warnings"] or [])  # the old warning stays
    finally:
        eng.cleanup()


def test_normal_data_root_uses_overlay2():
    eng = RuntimeEngine()
    try:
        eng.start()
        eng.load_busybox()
        info = _info(eng)
        assert info["Driver"] == "overlay2"
        assert not any("vfs" in w for w in info["Warnings"] or [])
        eng.docker("create", "--name", "ctr-b", "busybox", "true")
        inspect = json.loads(eng.docker("inspect", "ctr-b").stdout)[0]
        assert inspect["GraphDriver"]["Name"] == "overlay2"
        assert "UpperDir" in inspect["GraphDriver"]["Data"]
    finally:
        eng.cleanup()


def test_vfs_copy_never_follows_a_lower_layers_link_out(overlay_engine, tmp_path):
    """Layer 1 plants `esc -> <host dir>`; layer 2 writes esc/pwned. The copy resolves esc inside the rootfs."""
    eng = overlay_engine
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    planted = layer_tar([("esc", "symlink", str(decoy), 0o777), ("hl", "symlink", "/", 0o777)])
    writer = layer_tar([("esc/pwned", "file", "owned", 0o644), ("hl/etc/pwned", "file", "owned", 0o644)])
    config = image_config([_sha(planted), _sha(writer)], cmd=("/pwned",))
    archive = tmp_path / "evil.tar"
    write_archive(archive, [(config, [planted, writer], ["evil:1"])])
    eng.docker("load", "-i", str(archive))
    created = eng.docker("create", "--name", "evil-ctr", "evil:1", check=False)
    assert list(decoy.iterdir()) == [] and not os.path.exists("/etc/pwned")
    assert created.returncode == 0, created.stderr  # the writes landed inside the container's own copy
    rootfs = json.loads(eng.docker("inspect", "evil-ctr").stdout)[0]["GraphDriver"]["Data"]["Dir"]
    assert rootfs.startswith(str(eng.data_root) + "/vfs/")
    assert (Path(rootfs + str(decoy)) / "pwned").read_text() == "owned"
    assert (Path(rootfs) / "etc" / "pwned").read_text() == "owned"
    assert _info(eng)["Driver"] == "vfs"  # the engine still answers
