"""Hostile images and hostile mounts (issue 9, items 2, 3 and 7) against a real engine on this machine.

- an image with VOLUME /data holding a block node of a (loop) disk, a /dev/zero-like node, a fifo and
  symlinks to /etc: copy-up reads none of them, recreates the nodes as nodes, keeps the links as links;
- a container sharing a volume plants symlinks to the host where another container's mount targets go,
  and a target component swapped after it was resolved: every mount lands inside the container's root;
- `-v dir:/x:ro` with a submount inside dir: read-only in the submount too;
- data-root 0710 root:root and volume dirs 0700 (also when an older engine made them 0711/0701): a host
  user other than root cannot reach, let alone run, a setuid file a container left in a volume.
Each test shows the attack failing, that nothing outside the data-root changed, and that the engine
still answers.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import tarfile
import traceback
from pathlib import Path

import pytest

from dockyard.engine.runtime import copyup, rootpath
from dockyard.engine.runtime.libc import CLONE_NEWNS, MNT_DETACH, MS_PRIVATE, MS_REC, mount, umount2, unshare
from tests.engine.runtime_helper import RuntimeEngine
from tests.images import busybox_binary, busybox_layer, image_config, write_archive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts, device nodes and containers need root")

N = ("--network", "none")
MARKER = b"HOST-DISK-MARKER"
NOBODY = 65534


# -- helpers -----------------------------------------------------------------------------------------


def etc_snapshot():
    """What an escape would touch: /etc's entries (and the bytes of passwd)."""
    out = {}
    for entry in os.scandir("/etc"):
        st = entry.stat(follow_symlinks=False)
        out[entry.name] = (st.st_mode, st.st_size, st.st_mtime_ns)
    out["passwd-bytes"] = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    return out


def tree_snapshot(path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def engine_mounts(eng):
    """Mount points in the engine's mount namespace outside its own directory."""
    pid = int((eng.dir / "engine.pid").read_text())
    points = set()
    for line in Path("/proc/%d/mountinfo" % pid).read_text().splitlines():
        mnt = line.split()[4]
        if not mnt.startswith(str(eng.dir) + "/"):
            points.add(mnt)
    return points


def assert_engine_answers(eng):
    assert eng.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    assert eng.docker("ps", "-a", "--format", "{{.ID}}").returncode == 0


def run_in_child(fn):
    """fn() in a forked child with its own (private) mount namespace; its exception fails the test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            unshare(CLONE_NEWNS)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            fn()
        except BaseException:
            os.write(w, traceback.format_exc().encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        err = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err


def as_nobody(fn):
    """fn() in a forked child running as uid/gid 65534 with no groups; -> its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _member(name, kind, mode, payload=b"", link="", dev=(0, 0), xattrs=None):
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = mode, 0, 0, 1704067200
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = link
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = dev
    if xattrs:
        info.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


def hostile_layer(disk_rdev):
    members = [
        _member("data", tarfile.DIRTYPE, 0o755),
        _member("data/zero", tarfile.CHRTYPE, 0o666, dev=(1, 5)),
        _member("data/disk", tarfile.BLKTYPE, 0o660, dev=(os.major(disk_rdev), os.minor(disk_rdev))),
        _member("data/fifo", tarfile.FIFOTYPE, 0o644),
        _member("data/etc", tarfile.SYMTYPE, 0o777, link="/etc"),
        _member("data/pw", tarfile.SYMTYPE, 0o777, link="../etc/passwd"),
        _member("data/setuid", tarfile.REGTYPE, 0o4755, payload=b"#!/bin/sh\n"),
        _member("data/h1", tarfile.REGTYPE, 0o640, payload=b"linked\n", xattrs={"user.origin": "image"}),
        _member("data/h2", tarfile.LNKTYPE, 0o640, link="data/h1"),
        _member("data/sub", tarfile.DIRTYPE, 0o2750),
        _member("data/sub/deep", tarfile.REGTYPE, 0o600, payload=b"deep\n"),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, fh in members:
            tar.addfile(info, fh)
    return buf.getvalue()


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop_disk(tmp_path_factory):
    """(rdev, backing file) of a loop device full of MARKER: what copy-up must never read.

    Without loop devices: (the host disk's rdev, None)."""
    backing = tmp_path_factory.mktemp("disk") / "disk.img"
    backing.write_bytes(MARKER * (1 << 16))  # 1 MiB
    p = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if p.returncode != 0:
        # No loop devices here: the disk the host's / lives on (its bytes are not known to the test).
        yield os.stat("/").st_dev, None
        return
    dev = p.stdout.strip()
    try:
        yield os.stat(dev).st_rdev, backing
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture(scope="module")
def eng(tmp_path_factory, loop_disk):
    e = RuntimeEngine()
    # A data-root as an older engine left it: 0711, volume dirs 0701. The engine fixes them at start.
    data = e.dir / "data"
    old = data / "volumes" / "oldvol"
    (old / "_data").mkdir(parents=True)
    (old / "meta.json").write_text(json.dumps({"Name": "oldvol", "Created": 1.0, "Labels": {}}))
    os.chmod(data, 0o711)
    os.chmod(data / "volumes", 0o701)
    os.chmod(old, 0o701)
    # Only the engine's own modes may stand between a host user and the data-root.
    os.chmod(e.dir, 0o755)
    try:
        e.start()
        e.load_busybox()
        layer = busybox_layer(busybox_binary().read_bytes())
        evil = hostile_layer(loop_disk[0])
        diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (layer, evil)]
        config = image_config(diff_ids, extra_config={"Volumes": {"/data": {}}})
        archive = write_archive(e.dir / "hostile.tar", [(config, [layer, evil], ["hostile:latest"])])
        e.docker("load", "-i", str(archive))
        yield e
    finally:
        e.cleanup()


# -- item 2: copy-up ------------------------------------------------------------------------------------


def check_copied_volume(vol, disk_rdev):
    zero, disk, fifo = os.lstat(vol / "zero"), os.lstat(vol / "disk"), os.lstat(vol / "fifo")
    assert stat.S_ISCHR(zero.st_mode) and zero.st_rdev == os.makedev(1, 5) and stat.S_IMODE(zero.st_mode) == 0o666
    assert stat.S_ISBLK(disk.st_mode) and disk.st_rdev == disk_rdev and stat.S_IMODE(disk.st_mode) == 0o660
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o644
    assert os.readlink(vol / "etc") == "/etc" and os.readlink(vol / "pw") == "../etc/passwd"
    assert stat.S_IMODE(os.lstat(vol / "setuid").st_mode) == 0o4755
    h1, h2 = os.lstat(vol / "h1"), os.lstat(vol / "h2")
    assert (h1.st_ino, h1.st_nlink, stat.S_IMODE(h1.st_mode)) == (h2.st_ino, 2, 0o640)
    assert os.getxattr(vol / "h1", "user.origin") == b"image"
    assert stat.S_IMODE(os.lstat(vol / "sub").st_mode) == 0o2750 and (vol / "sub" / "deep").read_bytes() == b"deep\n"
    # Neither the disk's bytes nor /dev/zero's nor a copy of /etc went in.
    total = 0
    for dirpath, dirnames, filenames in os.walk(vol):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512
            if stat.S_ISREG(st.st_mode):
                assert MARKER not in Path(dirpath, name).read_bytes()
    assert total < 64 * 1024


def test_copy_up_recreates_nodes_never_reads_them(eng, loop_disk):
    before, mounts = etc_snapshot(), engine_mounts(eng)
    backing = loop_disk[1] and hashlib.sha256(loop_disk[1].read_bytes()).hexdigest()
    p = eng.docker(
        "run",
        "--rm",
        *N,
        "-v",
        "devvol:/data",
        "hostile",
        "sh",
        "-c",
        "head -c 16 /data/disk; echo disk=$?; head -c 16 /data/zero | wc -c; cat /data/pw | head -c 0; echo ok",
        check=False,
    )
    assert MARKER.decode() not in p.stdout and "disk=1" in p.stdout, p.stdout + p.stderr  # nodev in the container
    check_copied_volume(eng.dir / "data" / "volumes" / "devvol" / "_data", loop_disk[0])
    # The anonymous volume of VOLUME /data gets the same copy.
    eng.docker("create", "--name", "anon", *N, "hostile", "true")
    eng.docker("start", "-a", "anon")
    source = json.loads(eng.docker("inspect", "anon").stdout)[0]["Mounts"][0]["Source"]
    assert source.startswith(str(eng.dir / "data" / "volumes") + "/")
    check_copied_volume(Path(source), loop_disk[0])
    # The engine's own mount of the image content (the container's merged overlay) honours no nodes, no setuid.
    cid = json.loads(eng.docker("inspect", "anon").stdout)[0]["Id"]
    merged = str(eng.dir / "data" / "overlay" / cid / "merged")
    pid = int((eng.dir / "engine.pid").read_text())
    options = {
        f[4]: set(f[5].split(",")) for f in map(str.split, Path("/proc/%d/mountinfo" % pid).read_text().splitlines())
    }
    assert {"nodev", "nosuid"} <= options[merged]
    eng.docker("rm", "-v", "anon")
    assert etc_snapshot() == before and engine_mounts(eng) == mounts
    assert not backing or hashlib.sha256(loop_disk[1].read_bytes()).hexdigest() == backing
    assert_engine_answers(eng)


def test_copy_up_walk_opens_no_special_file_and_follows_no_link(tmp_path):
    """copyup.copy_up on a plain tree (no nodev mount to help): a fifo would block, /dev/zero never end."""
    root, vol, vol2, outside = tmp_path / "root", tmp_path / "vol", tmp_path / "vol2", tmp_path / "outside"
    for d in (root / "data" / "dir", vol, vol2, outside):
        d.mkdir(parents=True)
    (outside / "secret").write_text("host\n")
    os.mknod(root / "data" / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mkfifo(root / "data" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "data" / "sock"))
    sock.close()
    os.symlink(str(outside), root / "data" / "out")
    os.symlink("../../../../../../..", root / "data" / "dir" / "up")
    os.symlink(str(outside), root / "linked-volume-path")
    before = tree_snapshot(outside)

    def opened_a_fifo(*_):
        raise TimeoutError("copy-up blocked: it opened a fifo or read a device")

    old = signal.signal(signal.SIGALRM, opened_a_fifo)
    signal.alarm(20)
    try:
        copyup.copy_up(str(root), "/data", str(vol))
        # VOLUME at a path that is a symlink in the image: resolved inside the root (nothing there).
        copyup.copy_up(str(root), "/linked-volume-path", str(vol2))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert stat.S_ISCHR(os.lstat(vol / "zero").st_mode) and os.lstat(vol / "zero").st_rdev == os.makedev(1, 5)
    assert stat.S_ISFIFO(os.lstat(vol / "fifo").st_mode) and stat.S_ISSOCK(os.lstat(vol / "sock").st_mode)
    assert os.readlink(vol / "out") == str(outside) and os.readlink(vol / "dir" / "up") == "../../../../../../.."
    assert os.listdir(vol2) == []
    assert tree_snapshot(outside) == before


# -- item 3: mount targets and sources resolved once ---------------------------------------------------


def test_planted_symlinks_in_shared_volume_keep_mounts_inside_the_root(eng, tmp_path):
    hostdir = tmp_path / "bind"
    hostdir.mkdir()
    (hostdir / "file").write_text("bound\n")
    before, mounts, bind_before = etc_snapshot(), engine_mounts(eng), tree_snapshot(hostdir)
    # Container A plants symlinks to the host's /etc where container B's mount targets go.
    eng.docker(
        "run", "--rm", *N, "-v", "shared:/shared", "busybox", "sh", "-c",
        "ln -s /etc /shared/sub && ln -s ../../../../../../../../etc /shared/rel && ln -s /etc/dy-final /shared/final",
    )  # fmt: skip
    p = eng.docker(
        "run", "--rm", *N, "-v", "shared:/shared",
        "-v", "%s/file:/shared/sub/dy-planted" % hostdir,
        "-v", "%s:/shared/rel/dy-planted-dir:ro" % hostdir,
        "-v", "%s/file:/shared/final" % hostdir,
        "-v", "other:/shared/sub/dy-volume",
        "--tmpfs", "/shared/rel/dy-tmpfs",
        "busybox", "sh", "-c",
        "cat /etc/dy-planted /etc/dy-planted-dir/file /etc/dy-final; ls -d /etc/dy-volume /etc/dy-tmpfs",
    )  # fmt: skip
    assert p.stdout == "bound\nbound\nbound\n/etc/dy-tmpfs\n/etc/dy-volume\n"
    for name in ("dy-planted", "dy-planted-dir", "dy-final", "dy-volume", "dy-tmpfs"):
        assert not os.path.lexists("/etc/" + name)
    assert etc_snapshot() == before and engine_mounts(eng) == mounts and tree_snapshot(hostdir) == bind_before
    assert_engine_answers(eng)


def test_racing_swapper_never_gets_a_mount_onto_the_host(eng, tmp_path):
    """A container flips a shared path between a directory and a symlink to /etc while others mount under it."""
    (tmp_path / "file").write_text("bound\n")
    before, mounts = etc_snapshot(), engine_mounts(eng)
    swap = "while :; do mkdir /s/sub; rm -rf /s/sub; ln -s /etc /s/sub; rm -f /s/sub; done"
    eng.docker("run", "-d", "--name", "swapper", *N, "-v", "race:/s", "busybox", "sh", "-c", swap)
    try:
        outcomes = set()
        for attempt in range(40):  # at least 15, and until one mount went through (inside the root)
            if attempt >= 15 and 0 in outcomes:
                break
            p = eng.docker(
                "run", "--rm", *N, "-v", "race:/s", "-v", "%s/file:/s/sub/dy-race" % tmp_path,
                "--tmpfs", "/s/sub/dy-race-tmpfs", "busybox", "true",
                check=False,
            )  # fmt: skip
            outcomes.add(p.returncode)
            assert not os.path.lexists("/etc/dy-race") and not os.path.lexists("/etc/dy-race-tmpfs")
        assert 0 in outcomes  # the mounts do happen (inside the root), not just fail
    finally:
        eng.docker("rm", "-f", "swapper", check=False)
    assert etc_snapshot() == before and engine_mounts(eng) == mounts
    assert_engine_answers(eng)


@pytest.mark.parametrize("new_api", [True, False], ids=["mount_setattr", "remount"])
def test_target_swapped_after_resolution_is_not_followed(tmp_path, new_api):
    """The race made deterministic: the target is resolved, then a component becomes a symlink to the host."""
    root, host, src = tmp_path / "root", tmp_path / "host", tmp_path / "src"
    (root / "vol" / "sub").mkdir(parents=True)
    host.mkdir()
    src.mkdir()
    (src / "payload").write_text("x")
    before = tree_snapshot(host)

    def attack():
        rootpath.new_mount_api = new_api
        root_fd = os.open(root, rootpath.O_PATH | os.O_DIRECTORY)
        src_fd = os.open(src, rootpath.O_PATH | os.O_DIRECTORY)
        target = rootpath.open_in_root(root_fd, "/vol/sub/mnt", create="dir")
        # (mnt2 is made while sub is still a directory: the string check below passes)
        os.rename(root / "vol" / "sub", root / "vol" / "sub.old")  # the other container's move
        os.symlink(str(host), root / "vol" / "sub")
        os.close(rootpath.bind(src_fd, target, rootpath.MS_RDONLY))
        assert (root / "vol" / "sub.old" / "mnt" / "payload").exists()
        assert not (host / "mnt").exists() and tree_snapshot(host) == before
        # The control: a path string checked before the swap, used after it, lands on the host.
        checked = os.path.join(root, "vol", "sub", "mnt2")
        os.makedirs(checked, exist_ok=True)
        mount(str(src), checked, None, rootpath.MS_BIND)
        assert (host / "mnt2" / "payload").exists()
        umount2(checked, MNT_DETACH)
        os.rmdir(host / "mnt2")

    run_in_child(attack)
    assert tree_snapshot(host) == before


@pytest.mark.parametrize("new_api", [True, False], ids=["mount_setattr", "remount"])
def test_bind_flags_reach_submounts(tmp_path, new_api):
    src, target = tmp_path / "src", tmp_path / "target"
    (src / "sub").mkdir(parents=True)
    target.mkdir()

    def check():
        rootpath.new_mount_api = new_api
        mount("tmpfs", str(src / "sub"), "tmpfs", 0)
        src_fd = os.open(src, rootpath.O_PATH | os.O_DIRECTORY)
        tgt_fd = os.open(target, rootpath.O_PATH | os.O_DIRECTORY)
        os.close(rootpath.bind(src_fd, tgt_fd, rootpath.MS_RDONLY | rootpath.MS_NODEV | rootpath.MS_NOSUID))
        for path in (target / "f", target / "sub" / "f"):
            with pytest.raises(OSError) as exc:
                path.write_text("x")
            assert exc.value.errno == errno.EROFS
        opts = {}
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            opts[fields[4]] = set(fields[5].split(","))
        for point in (str(target), str(target / "sub")):
            assert {"ro", "nodev", "nosuid"} <= opts[point], (point, opts[point])
        (src / "sub" / "f").write_text("still writable at the source")

    run_in_child(check)


def test_readonly_bind_with_submount_stays_readonly(eng, tmp_path):
    hostdir = tmp_path / "ro"
    (hostdir / "sub").mkdir(parents=True)
    pid = int((eng.dir / "engine.pid").read_text())
    nsenter = ["nsenter", "-t", str(pid), "-m"]
    subprocess.run([*nsenter, "mount", "-t", "tmpfs", "tmpfs", str(hostdir / "sub")], check=True)
    try:
        before, mounts = etc_snapshot(), engine_mounts(eng)
        p = eng.docker(
            "run", "--rm", *N, "-v", "%s:/x:ro" % hostdir, "busybox", "sh", "-c",
            "touch /x/sub/f; echo sub=$?; touch /x/f; echo top=$?",
        )  # fmt: skip
        assert "sub=1" in p.stdout and "top=1" in p.stdout and "Read-only file system" in p.stderr
        listing = subprocess.run([*nsenter, "ls", "-A", str(hostdir / "sub")], capture_output=True, text=True)
        assert listing.returncode == 0 and listing.stdout == ""
        assert os.listdir(hostdir) == ["sub"]
        assert etc_snapshot() == before and engine_mounts(eng) == mounts
        assert_engine_answers(eng)
    finally:
        subprocess.run([*nsenter, "umount", str(hostdir / "sub")], capture_output=True)


# -- item 7: data-root and volume modes -----------------------------------------------------------------


def _mode_owner(path):
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_data_root_and_volume_dirs_keep_host_users_out(eng):
    data = eng.dir / "data"
    # Fixed at start: the fixture left them as an older engine made them (0711 / 0701).
    assert _mode_owner(data) == (0o710, 0, 0)
    assert _mode_owner(data / "volumes")[0] == 0o700 and _mode_owner(data / "volumes" / "oldvol")[0] == 0o700
    before = etc_snapshot()
    eng.docker("run", "--rm", *N, "-v", "suidvol:/v", "busybox", "sh", "-c", "cp /bin/busybox /v/sh; chmod 4755 /v/sh")
    shell = data / "volumes" / "suidvol" / "_data" / "sh"
    assert _mode_owner(data / "volumes" / "suidvol")[0] == 0o700
    assert os.lstat(shell).st_mode & stat.S_ISUID  # the container did leave a setuid-root shell

    def reach():
        try:
            os.stat(shell)
        except PermissionError:
            return 13
        return 0

    def run_it():
        try:
            os.execv(str(shell), [str(shell), "true"])
        except PermissionError:
            return 13
        return 0

    assert as_nobody(reach) == 13
    assert as_nobody(run_it) == 13
    # The control: with the modes older engines used, the same user reaches the shell...
    os.chmod(data, 0o711)
    for d in (data / "volumes", data / "volumes" / "suidvol"):
        os.chmod(d, 0o701)
    assert as_nobody(reach) == 0
    # ...and a restart takes them back.
    eng.restart()
    assert _mode_owner(data) == (0o710, 0, 0) and _mode_owner(data / "volumes" / "suidvol")[0] == 0o700
    assert as_nobody(reach) == 13 and as_nobody(run_it) == 13
    assert etc_snapshot() == before
    assert_engine_answers(eng)
