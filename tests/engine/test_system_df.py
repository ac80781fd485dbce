"""`docker system df [-v]`, `docker image prune -a` and `docker system prune` with the real CLI and docker-py."""

import json
import os

import pytest

from tests.engine.runtime_helper import busybox_engine

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the engine needs root")


@pytest.fixture
def eng():
    with busybox_engine() as e:
        yield e


def _df_rows(eng):
    rows = eng.docker("system", "df", "--format", "{{json .}}").stdout.splitlines()
    return {r["Type"]: r for r in map(json.loads, rows)}


def test_system_df_counts_sizes_and_verbose(eng):
    eng.docker("volume", "create", "dfvol")
    eng.docker(
        "run", "--name", "dfc", "-v", "dfvol:/v", "busybox", "sh", "-c", "head -c 300000 /dev/zero > /v/f; echo x > /x"
    )
    eng.docker("commit", "dfc", "dfchild:1")  # shares busybox's layer
    rows = _df_rows(eng)
    assert rows["Images"]["TotalCount"] == "2" and rows["Images"]["Active"] == "1"
    assert rows["Containers"]["TotalCount"] == "1" and rows["Containers"]["Active"] == "0"
    assert rows["Local Volumes"]["TotalCount"] == "1" and rows["Local Volumes"]["Active"] == "1"
    assert rows["Build Cache"]["TotalCount"] == "0"
    df = eng.client().df()
    busybox = [i for i in df["Images"] if "busybox:latest" in (i["RepoTags"] or [])][0]
    child = [i for i in df["Images"] if "dfchild:1" in (i["RepoTags"] or [])][0]
    assert busybox["Containers"] == 1 and child["Containers"] == 0
    assert busybox["SharedSize"] == busybox["Size"] > 0  # its one layer is in dfchild too
    assert child["Size"] > child["SharedSize"] == busybox["Size"]
    assert df["LayersSize"] == child["Size"]
    [vol] = df["Volumes"]
    assert vol["Name"] == "dfvol" and vol["UsageData"] == {"Size": 300000, "RefCount": 1}
    [ctr] = df["Containers"]
    assert ctr["Names"] == ["/dfc"] and ctr["SizeRw"] >= 2
    verbose = eng.docker("system", "df", "-v").stdout
    assert "dfchild" in verbose and "dfvol" in verbose and "dfc" in verbose
    p = eng.docker("system", "df", "-v", "--format", "{{json .}}")
    assert p.returncode == 0
    # only some types
    api = eng.client().api
    assert set(api._get(api._url("/system/df"), params={"type": "volume"}).json()) == {"Volumes"}
    bad = api._get(api._url("/system/df"), params={"type": "nonsense"})
    assert bad.status_code == 400


def test_image_prune_all_and_system_prune(eng):
    eng.docker("run", "--name", "keep", "busybox", "true")
    eng.docker("run", "--name", "gone", "-v", "/anon", "busybox", "sh", "-c", "echo y > /y")
    anon = json.loads(eng.docker("inspect", "gone").stdout)[0]["Mounts"][0]["Name"]
    assert anon in eng.docker("volume", "ls", "-q").stdout.split()
    eng.docker("commit", "gone", "unused:1")
    eng.docker("network", "create", "prunenet")
    eng.docker("volume", "create", "prunevol")
    # image prune -a: every image no container uses goes, busybox (used by both) stays
    out = eng.docker("image", "prune", "-a", "-f").stdout
    assert "unused:1" in out and "Total reclaimed space" in out
    assert eng.docker("images", "--format", "{{.Repository}}").stdout.split() == ["busybox"]
    eng.docker("commit", "gone", "unused:2")
    # system prune -a --volumes: stopped containers, unused networks, images, anonymous volumes (Docker 23+)
    out = eng.docker("system", "prune", "-a", "-f", "--volumes").stdout
    assert "Deleted Containers" in out and "Deleted Networks" in out and "prunenet" in out
    assert eng.docker("ps", "-aq").stdout == ""
    assert eng.docker("images", "-q").stdout == ""
    assert "prunenet" not in eng.docker("network", "ls").stdout
    assert eng.docker("volume", "ls", "-q").stdout.split() == ["prunevol"]  # anon went, a named one stays
    assert eng.docker("version").returncode == 0
