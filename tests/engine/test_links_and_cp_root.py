"""Two compatibility defects against a real engine (tests/engine/runtime_helper.py) with the docker CLI
and docker-py: HostConfig.Links as dockerd's inspect shows them, and `docker cp` of a stopped container's
`/` (or any directory holding mount points) with its volumes' and bind mounts' contents."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def test_links_are_shown_as_dockerd_normalizes_them(eng):
    d = eng.docker
    d("run", "-d", "--name", "lk-db", "busybox", "sleep", "300")
    try:
        d("create", "--name", "lk-web", "--link", "lk-db:store", "--link", "lk-db", "busybox", "true")
        links = json.loads(d("inspect", "-f", "{{json .HostConfig.Links}}", "lk-web").stdout)
        assert sorted(links) == ["/lk-db:/lk-web/lk-db", "/lk-db:/lk-web/store"]
        client = eng.client()
        ctr = client.containers.create("busybox", "true", name="lk-py", links={"lk-db": "db2"})
        assert ctr.attrs["HostConfig"]["Links"] == ["/lk-db:/lk-py/db2"]
        # moby's own form round-trips, and removing a link still finds it by its alias
        d("create", "--name", "lk-full", "--link", "/lk-db:/lk-full/pg", "busybox", "true")
        assert json.loads(d("inspect", "-f", "{{json .HostConfig.Links}}", "lk-full").stdout) == ["/lk-db:/lk-full/pg"]
        d("rm", "--link", "/lk-web/store")
        assert json.loads(d("inspect", "-f", "{{json .HostConfig.Links}}", "lk-web").stdout) == ["/lk-db:/lk-web/lk-db"]
        assert d("inspect", "-f", "{{json .HostConfig.Links}}", "lk-db").stdout.strip() == "null"
    finally:
        d("rm", "-f", "lk-db", "lk-web", "lk-py", "lk-full", check=False)


def test_cp_of_a_stopped_containers_root_has_its_volumes_and_binds(eng, tmp_path):
    d = eng.docker
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "b.txt").write_text("bindfile\n")
    single = tmp_path / "single.txt"
    single.write_text("one file\n")
    script = "echo volfile > /srv/data/v.txt; mkdir /srv/data/sub; echo deep > /srv/data/sub/d.txt; sleep 300"
    d(
        "run", "-d", "--name", "cproot", "--network", "none",
        "-v", "cprootvol:/srv/data", "-v", f"{bind}:/mnt/bnd", "-v", f"{single}:/opt/single.txt:ro",
        "busybox", "sh", "-c", script,
    )  # fmt: skip
    try:
        for _ in range(100):
            if d("exec", "cproot", "test", "-f", "/srv/data/sub/d.txt", check=False).returncode == 0:
                break
        d("stop", "-t", "0", "cproot")
        out = tmp_path / "root"
        d("cp", "cproot:/", str(out))
        assert (out / "srv" / "data" / "v.txt").read_text() == "volfile\n"
        assert (out / "srv" / "data" / "sub" / "d.txt").read_text() == "deep\n"
        assert (out / "mnt" / "bnd" / "b.txt").read_text() == "bindfile\n"
        assert (out / "opt" / "single.txt").read_text() == "one file\n"
        assert (out / "bin" / "busybox").is_file()  # and the image's own files, as before
        # a directory above a mount point, not only `/`
        d("cp", "cproot:/srv", str(tmp_path / "srv"))
        assert (tmp_path / "srv" / "data" / "sub" / "d.txt").read_text() == "deep\n"
        # docker-py's get_archive: the same tree in the tar
        bits, stat = eng.client().containers.get("cproot").get_archive("/mnt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            member = tar.getmember("mnt/bnd/b.txt")
            assert tar.extractfile(member).read() == b"bindfile\n"
        assert stat["name"] == "mnt"
    finally:
        d("rm", "-f", "cproot", check=False)
        d("volume", "rm", "cprootvol", check=False)
