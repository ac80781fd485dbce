"""--userns-remap: root in a container is an unprivileged uid on the host.

Real containers on a real engine started with `--userns-remap default` (which creates the user
dockyard-remap and its ranges in /etc/subuid and /etc/subgid on this host if missing, as dockerd
creates dockremap). Checked from the host: /proc/<pid>/status of container and exec processes, the
owners of files containers write into binds and volumes, the owners of extracted layers.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from dockyard.engine.config import ConfigError, parse_config
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images import tarsafe
from dockyard.engine.runtime import userns
from dockyard.provisioner.provision import engine_config
from tests.engine.runtime_helper import RuntimeEngine, remapping_engine
from tests.images import busybox_binary, busybox_layer, image_config, layer_tar, write_archive

N = ("--network", "none")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")
remap_ok = pytest.mark.skipif(
    os.geteuid() != 0 or userns.unsupported_reason() is not None or shutil.which("useradd") is None,
    reason=str(userns.unsupported_reason() or "needs root and useradd"),
)


# -- units --------------------------------------------------------------------------------------------
def test_id_map_stacks_ranges_and_refuses_ids_outside():
    m = userns.IdMap.from_ranges([(100000, 65536), (300000, 10)], [(200000, 65536)])
    assert m.root == (100000, 200000)
    assert m.shift(1000, 50) == (101000, 200050)
    assert m.host_uid(65536) == 300000  # the second range continues the container's ids
    assert userns.map_text(m.uids) == b"0 100000 65536\n65536 300000 10\n"
    with pytest.raises(InvalidParameter, match="Container ID 65546 cannot be mapped to a host ID"):
        m.host_uid(65546)
    with pytest.raises(InvalidParameter):
        m.host_gid(70000)
    assert userns.IdMap.from_dict(m.to_dict()).shift(5, 5) == m.shift(5, 5)


def test_new_ranges_start_above_existing_ones(tmp_path, monkeypatch):
    sub = tmp_path / "subuid"
    sub.write_text("alice:100000:65536\nbob:165536:65536")  # no final newline
    userns._add_range(str(sub), "dockyard-remap")
    assert sub.read_text().splitlines()[-1] == "dockyard-remap:231072:65536"
    empty = tmp_path / "subgid"
    userns._add_range(str(empty), "dockyard-remap")
    assert empty.read_text() == "dockyard-remap:100000:65536\n"


def test_setting_is_checked(tmp_path):
    base = ["--data-root", str(tmp_path / "d"), "--exec-root", str(tmp_path / "e")]
    cfg, _ = parse_config(base + ["--config-file", str(_file(tmp_path, "{}")), "--userns-remap", "default"])
    assert cfg.userns_remap == "default"
    cfg, _ = parse_config(base + ["--config-file", str(_file(tmp_path, '{"userns-remap": "1000:1000"}'))])
    assert cfg.userns_remap == "1000:1000"
    cfg, _ = parse_config(base + ["--config-file", str(_file(tmp_path, "{}"))])
    assert cfg.userns_remap == ""  # off by default, like Docker
    for bad in ("default:x", "a:b:c", ":x"):
        with pytest.raises(ConfigError, match="invalid --userns-remap"):
            parse_config(base + ["--config-file", str(_file(tmp_path, "{}")), "--userns-remap", bad])


def _file(tmp_path, text):
    p = tmp_path / "engine.json"
    p.write_text(text)
    return p


def test_engine_opt_reaches_engine_json_as_its_own_key():
    config = engine_config({"ArbitraryFlags": ["userns-remap=default", "bip=10.9.0.1/24"]}, 2376)
    assert config["userns-remap"] == "default"
    assert "userns-remap" not in config["opts"] and config["opts"]["bip"] == "10.9.0.1/24"
    assert "userns-remap" not in engine_config({"ArbitraryFlags": []}, 2376)


@root_only
def test_layer_owners_are_shifted_and_ids_outside_the_range_refused(tmp_path):
    m = userns.IdMap.from_ranges([(100000, 65536)], [(100000, 65536)])
    good = tmp_path / "good"
    good.mkdir()
    tar = _tar(tmp_path / "g.tar", [("a/b", 0, 0), ("a/c", 1000, 50)])
    with tarfile.open(tar) as t:
        tarsafe.safe_extract(t, str(good), shift=m.shift)
    assert _owner(good / "a") == (100000, 100000)  # implicit parent: the remapped root
    assert _owner(good / "a" / "b") == (100000, 100000)
    assert _owner(good / "a" / "c") == (101000, 100050)
    bad = tmp_path / "bad"
    bad.mkdir()
    tar = _tar(tmp_path / "b.tar", [("x", 70000, 0)])
    with tarfile.open(tar) as t, pytest.raises(InvalidParameter, match="Container ID 70000 cannot be mapped"):
        tarsafe.safe_extract(t, str(bad), shift=m.shift)


def _tar(path, entries):
    with tarfile.open(path, "w") as t:
        for name, uid, gid in entries:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.size = uid, gid, 1
            t.addfile(info, io.BytesIO(b"x"))
    return path


def _owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# -- a remapping engine -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eng():
    with remapping_engine() as e:
        yield e


@pytest.fixture(scope="module")
def remap(eng):
    """(host uid, host gid) of the containers' root, from /etc/subuid and /etc/subgid."""
    return userns.load("default").root


def _status_ids(pid):
    ids = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            ids[key] = [int(v) for v in value.split()]
    return ids


def _run_d(eng, *args):
    cid = eng.docker("run", "-d", *N, *args).stdout.strip()
    pid = int(eng.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
    return cid, pid


@remap_ok
def test_root_inside_is_the_remapped_uid_outside(eng, remap):
    assert eng.docker("run", "--rm", *N, "busybox", "id").stdout.strip() == "uid=0(root) gid=0(root)"
    cid, pid = _run_d(eng, "busybox", "sleep", "60")
    try:
        ids = _status_ids(pid)
        assert ids["Uid"] == [remap[0]] * 4 and ids["Gid"] == [remap[1]] * 4
        assert Path("/proc/%d/uid_map" % pid).read_text().split() == ["0", str(remap[0]), "65536"]
        assert os.stat("/proc/%d/ns/user" % pid).st_ino != os.stat("/proc/self/ns/user").st_ino
        # exec joins the container's user namespace: root inside, the remapped uid outside
        assert eng.docker("exec", cid, "id", "-u").stdout.strip() == "0"
        assert eng.docker("exec", "-t", cid, "sh", "-c", "[ -t 0 ] && echo tty").stdout.strip() == "tty"
        eng.docker("exec", "-d", "--user", "1000", cid, "sleep", "72")
        assert _status_ids(_wait_pid("sleep 72"))["Uid"] == [remap[0] + 1000] * 4
        eng.docker("exec", "-d", cid, "sleep", "71")
        exec_pid = _wait_pid("sleep 71")
        assert _status_ids(exec_pid)["Uid"] == [remap[0]] * 4
        # /proc, /sys, devpts, mqueue and shm are there inside the user namespace
        mounts = eng.docker("exec", cid, "cat", "/proc/self/mounts").stdout
        for fstype in (" proc ", " sysfs ", " devpts ", " mqueue ", "/dev/shm tmpfs"):
            assert fstype in mounts
        # devices, a terminal and the bridge network work in the user namespace
        out = eng.docker("exec", cid, "sh", "-c", "echo x > /dev/null && head -c 3 /dev/zero | wc -c")
        assert out.stdout.strip() == "3"
        assert (
            eng.docker(
                "run", "--rm", "-t", *N, "busybox", "sh", "-c", "[ -t 0 ] && readlink /proc/self/fd/0"
            ).stdout.strip()
            == "/dev/pts/0"
        )
        assert "eth0" in eng.docker("run", "--rm", "busybox", "ip", "-o", "addr").stdout
        out = eng.docker("run", "--rm", *N, "--read-only", "--tmpfs", "/t", "busybox", "sh", "-c",
                         "touch /x 2>/dev/null || echo ro; touch /t/y && stat -c %u /t/y")  # fmt: skip
        assert out.stdout.split() == ["ro", "0"]
        # the engine-written /etc files belong to the container's root
        out = eng.docker("exec", cid, "sh", "-c", "echo 10.1.2.3 x >> /etc/hosts && stat -c %u /etc/hosts /")
        assert out.stdout.split() == ["0", "0"]
    finally:
        eng.docker("rm", "-f", cid)


def _wait_pid(cmdline):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path("/proc/%s/cmdline" % entry).read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if text.strip() == cmdline:
                    return int(entry)
        time.sleep(0.05)
    raise AssertionError("no process %r" % cmdline)


@remap_ok
def test_files_written_into_binds_and_volumes_belong_to_the_remapped_root(eng, remap, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # the container's root has no rights on host root's files
    eng.docker("run", "--rm", *N, "-v", "%s:/out" % shared, "-v", "uvol:/data", "busybox", "sh", "-c",
               "touch /out/f /data/g && mkdir /out/d")  # fmt: skip
    assert _owner(shared / "f") == remap and _owner(shared / "d") == remap
    data = Path(eng.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "uvol").stdout.strip())
    assert str(data).startswith(str(eng.dir / "data" / ("%d.%d" % remap)) + "/")
    assert _owner(data) == remap and _owner(data / "g") == remap
    # copy-up fills a new volume with the image's (shifted) owners
    eng.docker("run", "--rm", *N, "-v", "uvol2:/etc", "busybox", "true")
    data2 = Path(eng.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "uvol2").stdout.strip())
    assert _owner(data2 / "passwd") == remap
    eng.docker("volume", "rm", "uvol", "uvol2")


@remap_ok
def test_image_files_are_root_inside_and_shifted_on_disk(eng, remap):
    out = eng.docker("run", "--rm", *N, "busybox", "stat", "-c", "%u:%g", "/bin/busybox", "/etc/passwd", "/tmp")
    assert out.stdout.split() == ["0:0"] * 3
    layers = eng.dir / "data" / ("%d.%d" % remap) / "image" / "layers"
    found = list(layers.glob("*/diff/bin/busybox"))
    assert found and all(_owner(p) == remap for p in found)
    assert not (eng.dir / "data" / "image").exists()  # nothing of the remapped engine outside <uid>.<gid>
    assert os.stat(eng.dir / "data" / ("%d.%d" % remap)).st_mode & 0o777 == 0o700


SUID_PROBE = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    printf("%u %u %u\n", r, e, s);
    fflush(stdout);
    if (argc > 1) sleep(atoi(argv[1]));
    return 0;
}
"""


@remap_ok
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the setuid probe is built with gcc")
def test_setuid_root_from_the_image_is_the_remapped_root_on_the_host(eng, remap, tmp_path):
    (tmp_path / "probe.c").write_text(SUID_PROBE)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")], check=True)
    layer = busybox_layer(busybox_binary().read_bytes())
    extra = layer_tar(
        [("bin", "dir", None, 0o755), ("bin/suid-probe", "file", (tmp_path / "probe").read_bytes(), 0o4755)]
    )
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (layer, extra)]
    archive = tmp_path / "suid.tar"
    write_archive(archive, [(image_config(diff_ids), [layer, extra], ["suid:latest"])])
    eng.docker("load", "-i", str(archive))
    as_user = ("--user", "1000:1000", "--security-opt", "no-new-privileges=false")
    inside = eng.docker("run", "--rm", *N, *as_user, "suid", "/bin/suid-probe").stdout.split()
    assert inside == ["1000", "0", "0"]  # setuid root works inside, as in Docker
    # no_new_privs (dockyard's default) keeps the setuid bit from working at all
    assert eng.docker("run", "--rm", *N, "--user", "1000", "suid", "/bin/suid-probe").stdout.split() == ["1000"] * 3
    cid, pid = _run_d(eng, *as_user, "suid", "/bin/suid-probe", "60")
    try:
        uid = _status_ids(pid)["Uid"]
        assert uid[:3] == [remap[0] + 1000, remap[0], remap[0]]  # on the host: the remapped root, never 0
        layers = eng.dir / "data" / ("%d.%d" % remap) / "image" / "layers"
        st = os.stat(next(layers.glob("*/diff/bin/suid-probe")))
        assert (st.st_uid, st.st_mode & 0o7777) == (remap[0], 0o4755)
    finally:
        eng.docker("rm", "-f", cid)
        eng.docker("rmi", "suid")


@remap_ok
def test_userns_host_opts_out_and_privileged_needs_it(eng, remap):
    cid, pid = _run_d(eng, "--userns", "host", "busybox", "sleep", "60")
    try:
        assert _status_ids(pid)["Uid"] == [0] * 4
        assert os.stat("/proc/%d/ns/user" % pid).st_ino == os.stat("/proc/self/ns/user").st_ino
    finally:
        eng.docker("rm", "-f", cid)
    api = eng.client().api
    with pytest.raises(Exception) as err:
        api.create_container("busybox", "true", host_config=api.create_host_config(privileged=True))
    assert getattr(err.value, "status_code", None) == 400
    assert "privileged mode is incompatible with user namespaces" in str(err.value)
    for flag in ("--pid", "--network", "--ipc", "--uts"):
        p = eng.docker("create", "%s=host" % flag, "busybox", "true", check=False)
        assert p.returncode != 0 and "incompatible with user namespaces" in p.stderr
    out = eng.docker("run", "--rm", "--privileged", "--userns", "host", *N, "busybox", "id", "-u")
    assert out.stdout.strip() == "0"


@remap_ok
def test_remapped_containers_survive_an_engine_restart(eng, remap):
    cid, pid = _run_d(eng, "busybox", "sleep", "300")
    try:
        eng.restart()
        assert eng.docker("inspect", "-f", "{{.State.Running}} {{.State.Pid}}", cid).stdout.split() == [
            "true",
            str(pid),
        ]
        assert eng.docker("exec", cid, "id", "-u").stdout.strip() == "0"
        eng.docker("stop", "-t", "1", cid)
        eng.docker("start", cid)
        pid2 = int(eng.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        assert pid2 != pid and _status_ids(pid2)["Uid"] == [remap[0]] * 4
    finally:
        eng.docker("rm", "-f", cid)


@remap_ok
def test_an_engine_without_the_option_does_not_remap():
    e = RuntimeEngine()
    try:
        e.start()
        e.load_busybox()
        cid = e.docker("run", "-d", *N, "busybox", "sleep", "60").stdout.strip()
        pid = int(e.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        assert _status_ids(pid)["Uid"] == [0] * 4
        assert os.stat("/proc/%d/ns/user" % pid).st_ino == os.stat("/proc/self/ns/user").st_ino
        assert (e.dir / "data" / "image" / "layers").is_dir()
        owners = {_owner(p) for p in (e.dir / "data" / "image" / "layers").glob("*/diff/bin/busybox")}
        assert owners == {(0, 0)}
    finally:
        e.cleanup()
