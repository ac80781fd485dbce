"""Laptop folders in a VirtualBox machine: --share PATH[:ro] / --no-share / the home directory by default (as qemu),
registered as VirtualBox shared folders, and the guest script that mounts them with vboxsf at the same paths and
keeps them in fstab. vboxsf needs a VirtualBox guest, so the script runs here with `mount`/`mountpoint`
stand-ins that record what it asks of them; everything else in it (mkdir, the fstab rewrite) is real."""

import os
import shutil
import subprocess

import pytest

from dockyard.drivers.virtualbox import driver as vdriver
from dockyard.drivers.virtualbox import shares
from dockyard.provisioner.core.errors import DriverError
from tests.drivers.test_virtualbox import flags, make

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils (.ci/vm-deps.sh)")


def test_flags_are_qemus_and_the_home_directory_is_the_default(fake, tmp_path, image, monkeypatch):
    names = [f.name for f in vdriver.VirtualBoxDriver.flags]
    assert "share" in names and "no-share" in names and "virtualbox-no-share" in names
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    d = make(tmp_path, image)
    assert "Shares" not in d.config  # chosen at create time, as qemu does
    d.prepare_media()
    assert d.config["Shares"] == [{"Path": str(home), "Tag": "share0", "ReadOnly": False}]
    assert f"Sharing {home} with the machine" in d.said
    d.register()
    assert fake.state()["vms"]["vb1"]["shares"] == {"share0": str(home)}
    extradata = fake.state()["vms"]["vb1"]["extradata"]
    assert extradata == {"VBoxInternal2/SharedFoldersEnableSymlinksCreate/share0": "1"}


def test_share_and_no_share_flags(fake, tmp_path, image):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    d = make(tmp_path, image, share=(str(a), f"{b}:ro"))
    assert d.config["Shares"] == [
        {"Path": str(a), "Tag": "share0", "ReadOnly": False},
        {"Path": str(b), "Tag": "share1", "ReadOnly": True},
    ]
    d.prepare_media()
    d.register()
    vm = fake.state()["vms"]["vb1"]
    assert vm["shares"] == {"share0": str(a), "share1": str(b)}
    assert vm["readonly_shares"] == {"share0": False, "share1": True}
    d2 = make(tmp_path / "2", image, no_share=True)
    assert d2.config["Shares"] == []
    d3 = make(tmp_path / "3", image, virtualbox_no_share=True)  # Docker Machine's flag means the same
    assert d3.config["Shares"] == []
    with pytest.raises(DriverError, match="contradict"):
        make(tmp_path / "4", image, share=(str(a),), no_share=True)
    with pytest.raises(DriverError, match="cover the machine's own /etc"):
        shares.from_flags(flags(share=("/etc",)), "docker")


@pytest.fixture
def guest(tmp_path):
    """Run the guest script with recording mount/mountpoint; returns (run, mounted log path, fstab path)."""
    bindir = tmp_path / "guestbin"
    bindir.mkdir()
    calls = tmp_path / "mount.calls"
    (bindir / "mount").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in *fail*) echo "mount: wrong fs type" >&2; exit 32;; esac\n'
    )
    (bindir / "mountpoint").write_text(f'#!/bin/sh\ngrep -q -- " $2\\$" {calls} 2>/dev/null\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    fstab = tmp_path / "fstab"

    def run(share_list):
        script = shares.guest_script(share_list, uid=1000, gid=1001, fstab=str(fstab))
        env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)

    return run, calls, fstab


def test_guest_script_mounts_at_the_same_paths_and_keeps_fstab(guest, tmp_path):
    run, calls, fstab = guest
    fstab.write_text(
        "/dev/vda1 / ext4 defaults 0 1\n"
        "share7 /old vboxsf uid=1,gid=1,nofail 0 0\n"  # a share of an earlier set-up: dropped
        "mine /media/mine vboxsf defaults 0 0\n"  # the user's own shared folder: kept
    )
    home, ro = tmp_path / "home" / "al ice", tmp_path / "ro"
    share_list = [
        {"Path": str(home), "Tag": "share0", "ReadOnly": False},
        {"Path": str(ro), "Tag": "share1", "ReadOnly": True},
    ]
    r = run(share_list)
    assert r.returncode == 0, r.stderr
    assert home.is_dir() and ro.is_dir()  # mount points made
    assert calls.read_text().splitlines() == [
        f"-t vboxsf -o uid=1000,gid=1001 share0 {home}",
        f"-t vboxsf -o uid=1000,gid=1001,ro share1 {ro}",
    ]
    escaped = str(home).replace(" ", "\\040")
    assert fstab.read_text() == (
        "/dev/vda1 / ext4 defaults 0 1\n"
        "mine /media/mine vboxsf defaults 0 0\n"
        f"share0 {escaped} vboxsf uid=1000,gid=1001,nofail 0 0\n"
        f"share1 {ro} vboxsf uid=1000,gid=1001,ro,nofail 0 0\n"
    )
    r = run(share_list)  # the next boot: mounted already (by fstab), nothing mounted twice, fstab the same
    assert r.returncode == 0 and len(calls.read_text().splitlines()) == 2
    assert fstab.read_text().count("share0 ") == 1


def test_guest_script_reports_a_share_it_cannot_mount_and_mounts_the_rest(guest, tmp_path):
    run, calls, fstab = guest
    fstab.write_text("")
    bad, good = tmp_path / "fail", tmp_path / "ok"
    r = run([{"Path": str(bad), "Tag": "share0"}, {"Path": str(good), "Tag": "share1"}])
    assert r.returncode == 1
    assert f"cannot mount {bad}" in r.stderr and "wrong fs type" in r.stderr
    assert calls.read_text().splitlines()[-1] == f"-t vboxsf -o uid=1000,gid=1001 share1 {good}"
    assert "share1 " in fstab.read_text()
