"""`docker diff`, `docker commit` (with --change and pause) and `docker export` with the real CLI and docker-py."""

import io
import json
import os
import tarfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the engine needs root")

CHANGES = "echo hi > /new && echo extra >> /etc/passwd && rm /bin/ls && mkdir -p /d/e && ln -s / /d/root"


def _images(eng):
    return sorted(eng.docker("images", "-aq", "--no-trunc").stdout.split())


def test_diff_lists_the_upper_dir_with_deletions(eng):
    eng.docker("run", "--name", "df1", "busybox", "sh", "-c", CHANGES)
    lines = eng.docker("diff", "df1").stdout.splitlines()
    assert lines == ["C /bin", "D /bin/ls", "A /d", "A /d/e", "A /d/root", "C /etc", "C /etc/passwd", "A /new"]
    changes = eng.client().containers.get("df1").diff()
    assert {"Path": "/bin/ls", "Kind": 2} in changes and {"Path": "/new", "Kind": 1} in changes
    eng.docker("create", "--name", "df2", "busybox")
    assert eng.docker("diff", "df2").stdout == ""  # the runtime's mount points are not changes
    eng.docker("rm", "df1", "df2")


def test_commit_with_changes_message_and_author(eng):
    eng.docker("run", "--name", "cm1", "busybox", "sh", "-c", CHANGES)
    out = eng.docker(
        "commit",
        "-c",
        'CMD ["cat", "/new"]',
        "-c",
        "ENV GREETING=hello",
        "-c",
        "LABEL team=dockyard",
        "-m",
        "a message",
        "-a",
        "someone",
        "cm1",
        "committed:1",
    ).stdout.strip()
    assert out.startswith("sha256:")
    assert eng.docker("run", "--rm", "committed:1").stdout == "hi\n"
    p = eng.docker("run", "--rm", "committed:1", "ls", "/bin/ls", check=False)
    assert p.returncode != 0  # the deletion is in the new layer
    assert "extra" in eng.docker("run", "--rm", "committed:1", "cat", "/etc/passwd").stdout
    info = json.loads(eng.docker("image", "inspect", "committed:1").stdout)[0]
    assert "GREETING=hello" in info["Config"]["Env"]
    assert info["Config"]["Labels"] == {"team": "dockyard"}
    assert info["Comment"] == "a message" and info["Author"] == "someone"
    base = json.loads(eng.docker("image", "inspect", "busybox").stdout)[0]
    assert info["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
    assert len(info["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
    history = eng.docker("history", "committed:1").stdout
    assert "a message" in history
    eng.docker("rm", "cm1")
    eng.docker("rmi", "committed:1")


def test_commit_of_a_running_container_pauses_it_and_lets_it_run_on(eng):
    eng.docker("run", "-d", "--name", "cm2", "busybox", "sleep", "60")
    eng.docker("exec", "cm2", "sh", "-c", "echo live > /live")
    c = eng.client().containers.get("cm2")
    img = c.commit(repository="live", tag="1", changes=["CMD cat /live"], conf={"Env": ["FROM_CONF=1"]})
    env = img.attrs["Config"]["Env"]
    assert "FROM_CONF=1" in env and any(e.startswith("PATH=") for e in env)  # merged by name, as moby
    assert eng.docker("inspect", "-f", "{{.State.Status}}", "cm2").stdout.strip() == "running"
    assert eng.docker("run", "--rm", img.id).stdout == "live\n"
    eng.docker("commit", "--pause=false", "cm2", "live:2")
    assert eng.docker("inspect", "-f", "{{.State.Status}}", "cm2").stdout.strip() == "running"
    eng.docker("rm", "-f", "cm2")
    eng.docker("rmi", "live:1", "live:2")


def test_bad_changes_are_refused_and_nothing_is_stored(eng):
    eng.docker("run", "--name", "cm3", "busybox", "sh", "-c", "echo x > /x")
    before = _images(eng)
    layers_dir = eng.dir / "data" / "image" / "layers"
    layers_before = sorted(os.listdir(layers_dir))
    p = eng.docker("commit", "-c", "RUN rm -rf /", "cm3", "bad:1", check=False)
    assert p.returncode == 1 and "RUN is not a valid change command" in p.stderr
    p = eng.docker("commit", "cm3", "Bad:Name", check=False)
    assert p.returncode == 1 and "invalid reference format" in p.stderr
    assert _images(eng) == before and sorted(os.listdir(layers_dir)) == layers_before
    p = eng.docker("commit", "nosuchcontainer", check=False)
    assert p.returncode == 1 and "No such container" in p.stderr
    eng.docker("rm", "cm3")


def test_export_is_the_merged_root_and_never_follows_links(eng, tmp_path):
    eng.docker("run", "--name", "ex1", "busybox", "sh", "-c", CHANGES)
    out = tmp_path / "ex1.tar"
    eng.docker("export", "-o", str(out), "ex1")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("new").read() == b"hi\n"
        assert b"extra" in tar.extractfile("etc/passwd").read()
        assert "bin/ls" not in names and "bin/sh" in names
        link = tar.getmember("d/root")
        assert link.issym() and link.linkname == "/"
        assert not [n for n in names if n.startswith("d/root/")]  # the link is stored, not followed
    # the export imports back into an image that runs
    eng.docker("import", str(out), "exported:1")
    assert eng.docker("run", "--rm", "exported:1", "cat", "/new").stdout == "hi\n"
    # docker-py reads the same stream
    data = b"".join(eng.client().containers.get("ex1").export())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("new").read() == b"hi\n"
    eng.docker("rm", "ex1")
    eng.docker("rmi", "exported:1")


def test_diff_never_looks_through_a_link_in_the_image(eng, tmp_path):
    """An image layer's /lnk -> / must not make diff consult the host's files for a path under /lnk."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN ln -s / /lnk\n")
    eng.docker("build", "-q", "-t", "linky:1", str(ctx), timeout=120)
    eng.docker("run", "--name", "lk", "linky:1", "sh", "-c", "rm /lnk && mkdir -p /lnk/etc && touch /lnk/etc/passwd")
    lines = eng.docker("diff", "lk").stdout.splitlines()
    # the host has /etc/passwd; the image has no /lnk/etc/passwd: it is an addition
    assert "A /lnk/etc/passwd" in lines and "A /lnk/etc" in lines, lines
    eng.docker("rm", "lk")
    eng.docker("rmi", "linky:1")


def test_export_of_a_running_container(eng, tmp_path):
    eng.docker("run", "-d", "--name", "ex2", "busybox", "sleep", "60")
    eng.docker("exec", "ex2", "sh", "-c", "echo running > /r")
    out = tmp_path / "ex2.tar"
    eng.docker("export", "-o", str(out), "ex2")
    with tarfile.open(out) as tar:
        assert tar.extractfile("r").read() == b"running\n"
        assert "bin/busybox" in tar.getnames()
        assert not [n for n in tar.getnames() if n.startswith("proc/")]  # not the container's mounts
    eng.docker("rm", "-f", "ex2")
