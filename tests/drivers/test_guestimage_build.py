"""The guest image recipe, its cache key, the mmdebstrap command and the pre-create checks of the build."""

import os

import pytest

from dockyard.drivers.guestimage import build, recipe, tools
from dockyard.provisioner.core.errors import PreCreateCheckError


def test_recipe_hash_is_stable_and_covers_the_recipe(monkeypatch):
    h = recipe.recipe_hash()
    assert h == recipe.recipe_hash() and len(h) == 64
    monkeypatch.setattr(recipe, "PACKAGES", recipe.PACKAGES + ("vim",))
    assert recipe.recipe_hash() != h


def test_recipe_has_what_provisioning_and_cloud_init_need():
    for pkg in (
        "systemd-sysv",
        "openssh-server",
        "python3",
        "iproute2",
        "cloud-init",
        "sudo",
        "linux-image-amd64",
        "initramfs-tools",
    ):
        assert pkg in recipe.PACKAGES
    hook = recipe.customize_hook()
    assert "datasource_list: [ NoCloud, None ]" in hook and "locale: C.UTF-8" in hook
    assert ': > "$R/etc/machine-id"' in hook and 'rm -f "$R"/etc/ssh/ssh_host_*' in hook
    for unit in ("e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "fstrim.timer"):
        assert unit in hook
    assert "virtio_blk" in recipe.setup_hook() and "@" not in recipe.setup_hook()
    assert f"root=LABEL={recipe.ROOT_LABEL}" in recipe.KERNEL_CMDLINE


def test_mmdebstrap_command(monkeypatch):
    monkeypatch.setenv(build.MIRROR_ENV, "http://mirror.example/debian")
    cmd = build.mmdebstrap_command("/w/rootfs", "/w/setup.sh", "/w/customize.sh")
    assert cmd[1:4] == ["--mode=root", "--format=directory", "--variant=minbase"]
    assert "--include=" + ",".join(recipe.PACKAGES) in cmd
    assert '--customize-hook=sh /w/customize.sh "$1"' in cmd and '--setup-hook=sh /w/setup.sh "$1"' in cmd
    assert cmd[-5:] == [
        "bookworm",
        "/w/rootfs",
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]


def test_cache_root_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv(build.CACHE_ENV, raising=False)
    assert build.cache_root(str(tmp_path / "c")) == str(tmp_path / "c" / "images")
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "shared"))
    assert build.cache_root(str(tmp_path / "c")) == str(tmp_path / "shared")
    assert build.store_cache_dir("/s/machines/m1") == "/s/cache"


def test_cached_image_needs_a_finished_build(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    d = build.image_dir(str(tmp_path))
    os.makedirs(d)
    assert build.cached_image(str(tmp_path)) is None  # an interrupted build has no image.json
    with open(os.path.join(d, build.INFO), "w") as f:
        f.write('{"recipe": "x", "cmdline": "root=LABEL=x"}')
    img = build.cached_image(str(tmp_path))
    assert img.disk == os.path.join(d, "disk.qcow2") and img.cmdline == "root=LABEL=x"


def test_missing_tools_name_their_package(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(
        PreCreateCheckError,
        match=r"mmdebstrap is needed to build the guest image .*"
        r'"apt-get install mmdebstrap"',
    ):
        build.check_can_build(str(tmp_path))
    with pytest.raises(PreCreateCheckError, match='"apt-get install qemu-system-x86"'):
        tools.require("qemu-system-x86_64", "to run the VM")
    with pytest.raises(PreCreateCheckError, match=r"/opt/none/qemu-kvm is needed to run the VM but was not found"):
        tools.require("/opt/none/qemu-kvm", "to run the VM")


def test_size_parsing():
    assert build._size_bytes("2G") == 2 << 30 and build._size_bytes("512M") == 512 << 20
    assert build._size_bytes("1024") == 1024


def test_no_mirror_is_hard_coded(monkeypatch):
    """Without $DOCKYARD_DEBIAN_MIRROR and without a Debian mirror in the host's apt sources, mmdebstrap gets
    no mirror at all and uses its own default."""
    monkeypatch.delenv(build.MIRROR_ENV, raising=False)
    monkeypatch.setattr(build, "_apt_entries", lambda: [("http://archive.ubuntu.com/ubuntu", "noble")])
    assert build.mirrors() == (None, None)
    cmd = build.mmdebstrap_command("/w/rootfs", "/w/setup.sh", "/w/customize.sh")
    assert cmd[-2:] == ["bookworm", "/w/rootfs"] and not any(a.startswith("deb ") for a in cmd)
    monkeypatch.setattr(build, "_apt_entries", lambda: [("http://ftp.example.org/debian", "bookworm")])
    assert build.mirrors() == ("http://ftp.example.org/debian", "http://ftp.example.org/debian-security")
