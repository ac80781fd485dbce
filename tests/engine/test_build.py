"""POST /build (the classic builder) end to end: a real engine on this machine, driven by the real
docker CLI (DOCKER_BUILDKIT=0) and docker-py; hostile contexts and Dockerfiles sent raw."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tests.engine.engine_helper import http_get
from tests.engine.runtime_helper import remapping_engine

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def write_context(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def build(eng, ctx, *args, check=True):
    env = eng.env()
    env["DOCKER_BUILDKIT"] = "0"
    p = subprocess.run(
        ["docker", "build", "--network", "none", *args, str(ctx)], capture_output=True, text=True, env=env, timeout=120
    )
    if check and p.returncode != 0:
        raise AssertionError(f"build exited {p.returncode}\n{p.stdout}\n{p.stderr}\n{eng.proc.stderr[-3000:]}")
    return p


def run_out(eng, image, *cmd):
    return eng.docker("run", "--rm", "--network", "none", image, *cmd).stdout


def tar_bytes(members) -> bytes:
    """members: (TarInfo-like dict, data) pairs -> an uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            ti = tarfile.TarInfo(info["name"])
            ti.type = info.get("type", tarfile.REGTYPE)
            ti.linkname = info.get("linkname", "")
            ti.mode = info.get("mode", 0o644)
            ti.size = len(data or b"")
            tar.addfile(ti, io.BytesIO(data or b""))
    return buf.getvalue()


def post_build(eng, body: bytes, query: str = "t=raw:1&networkmode=none"):
    return http_get(
        "/v1.50/build?" + query, unix=eng.sock, method="POST", body=body, headers={"Content-Type": "application/x-tar"}
    )


def messages(payload: bytes) -> list[dict]:
    return [json.loads(line) for line in payload.decode().splitlines() if line.strip()]


def assert_alive(eng):
    assert http_get("/_ping", unix=eng.sock)[0] == 200


# -- the CLI ---------------------------------------------------------------------------------------
MULTI = """\
FROM busybox AS base
ARG GREETING=hello
ENV WHO=${WHO:-world} MSG="$GREETING there"
WORKDIR /app
COPY early.txt ./
RUN cat /proc/sys/kernel/random/uuid > /stamp && echo "ran: $MSG $WHO"
COPY late.txt ./
FROM busybox
COPY --from=base /stamp /app/early.txt /app/late.txt /out/
CMD ["cat", "/out/late.txt"]
"""


def test_multistage_build_cache_hit_and_rerun_from_the_changed_step(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": MULTI, "early.txt": "e1\n", "late.txt": "l1\n"})
    t0 = time.monotonic()
    p1 = build(eng, ctx, "-t", "multi:1", "-t", "multi:alias")
    cold = time.monotonic() - t0
    assert "Step 1/10 : FROM busybox AS base" in p1.stdout
    assert "ran: hello there world" in p1.stdout
    assert "Successfully tagged multi:1" in p1.stdout and "Successfully tagged multi:alias" in p1.stdout
    image_id = eng.docker("image", "inspect", "-f", "{{.Id}}", "multi:1").stdout.strip()
    assert f"Successfully built {image_id[7:19]}" in p1.stdout
    stamp1 = run_out(eng, "multi:1", "cat", "/out/stamp")
    assert run_out(eng, "multi:1") == "l1\n"
    cfg = json.loads(eng.docker("image", "inspect", "multi:1").stdout)[0]["Config"]
    assert cfg["Cmd"] == ["cat", "/out/late.txt"]

    # Unchanged: every step from the cache, no RUN executed, the very same image.
    t0 = time.monotonic()
    p2 = build(eng, ctx, "-t", "multi:2")
    cached = time.monotonic() - t0
    assert "\nran: " not in p2.stdout and "Running in" not in p2.stdout
    assert p2.stdout.count(" ---> Using cache") == 8  # every step but the two FROMs
    assert eng.docker("image", "inspect", "-f", "{{.Id}}", "multi:2").stdout.strip() == image_id
    print(f"\nbuild of a 10-step Dockerfile: cold {cold:.2f} s, fully cached {cached:.2f} s")

    # A file copied after RUN changed: RUN stays cached (same stamp), the COPY and what follows re-run.
    (ctx / "late.txt").write_text("l2\n")
    p3 = build(eng, ctx, "-t", "multi:3")
    assert "\nran: " not in p3.stdout
    assert run_out(eng, "multi:3") == "l2\n"
    assert run_out(eng, "multi:3", "cat", "/out/stamp") == stamp1

    # A file copied before RUN changed: RUN runs again.
    (ctx / "early.txt").write_text("e2\n")
    p4 = build(eng, ctx, "-t", "multi:4")
    assert "ran: hello there world" in p4.stdout
    assert run_out(eng, "multi:4", "cat", "/out/stamp") != stamp1

    # --no-cache runs everything; a different --build-arg value re-runs RUN (it is part of RUN's key).
    assert "\nran: " in build(eng, ctx, "--no-cache").stdout
    p5 = build(eng, ctx, "--build-arg", "GREETING=bye", "-t", "multi:5")
    assert "ran: bye there world" in p5.stdout


def test_failing_run_reports_exit_code_and_tags_nothing(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo before\nRUN exit 3\nCMD x\n"})
    p = build(eng, ctx, "-t", "broken:1", check=False)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "The command '/bin/sh -c exit 3' returned a non-zero code: 3" in p.stderr
    assert "Successfully" not in p.stdout
    assert eng.docker("image", "inspect", "broken:1", check=False).returncode != 0
    assert_alive(eng)


def test_target_and_quiet(eng, tmp_path):
    df = "FROM busybox AS one\nRUN echo one > /which\nFROM one AS two\nRUN echo two > /which\n"
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    p = build(eng, ctx, "--target", "one", "-t", "tgt:1")
    assert "Step 2/2 : RUN echo one > /which" in p.stdout
    assert run_out(eng, "tgt:1", "cat", "/which") == "one\n"
    q = build(eng, ctx, "-q", "-t", "tgt:2")
    assert q.stdout.strip().startswith("sha256:") and "Step" not in q.stdout
    assert run_out(eng, "tgt:2", "cat", "/which") == "two\n"
    bad = build(eng, ctx, "--target", "nope", check=False)
    assert bad.returncode != 0 and "failed to reach build target nope in Dockerfile" in bad.stderr


def test_instructions_metadata_and_copy_forms(eng, tmp_path):
    inner = tmp_path / "inner.tar.gz"
    with tarfile.open(inner, "w:gz") as tar:
        data = b"from the tarball\n"
        ti = tarfile.TarInfo("pkg/file.txt")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    df = """\
# escape=`
FROM busybox
LABEL org.example.a="x y" `
      b=2
ENV DIR=/data
EXPOSE 8080 53/udp
VOLUME ["/vol"]
USER 1000:1000
STOPSIGNAL SIGUSR1
HEALTHCHECK --interval=5s --retries=2 CMD true
ONBUILD RUN echo triggered
SHELL ["/bin/sh", "-ec"]
COPY --chown=7:8 --chmod=0640 f*.txt ${DIR}/
ADD inner.tar.gz /opt/
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df, "f1.txt": "1\n", "f2.txt": "2\n"})
    (ctx / "inner.tar.gz").write_bytes(inner.read_bytes())
    build(eng, ctx, "-t", "meta:1", "--label", "from.cli=yes")
    info = json.loads(eng.docker("image", "inspect", "meta:1").stdout)[0]["Config"]
    assert info["Labels"] == {"org.example.a": "x y", "b": "2", "from.cli": "yes"}
    assert set(info["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert set(info["Volumes"]) == {"/vol"}
    assert info["User"] == "1000:1000" and info["StopSignal"] == "SIGUSR1"
    assert info["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert info["OnBuild"] == ["RUN echo triggered"]
    assert info["Shell"] == ["/bin/sh", "-ec"]
    assert info["Entrypoint"] == ["/bin/sh", "-c"] and info["Cmd"] == ["echo hi"]
    out = eng.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "0",
        "--entrypoint",
        "sh",
        "meta:1",
        "-c",
        "stat -c '%u:%g %a %n' /data/f1.txt /data/f2.txt; cat /opt/pkg/file.txt",
    ).stdout
    assert out == "7:8 640 /data/f1.txt\n7:8 640 /data/f2.txt\nfrom the tarball\n"
    # ONBUILD triggers run in a build FROM the image.
    child = write_context(tmp_path / "child", {"Dockerfile": "FROM meta:1\n"})
    p = build(eng, child, "-t", "meta:child")
    assert "# Executing 1 build trigger" in p.stdout and "triggered" in p.stdout


def test_dockerignore_applied_by_the_engine_too(eng, tmp_path):
    # docker-py with a custom context sends the files as they are: the engine applies .dockerignore.
    files = {
        ".dockerignore": "*.log\n**/secret*\n!keep.log\nbuild\n",
        "Dockerfile": "FROM busybox\nCOPY . /ctx/\n",
        "a.log": "x",
        "keep.log": "k",
        "sub/secret.txt": "s",
        "sub/ok.txt": "o",
        "build/out": "b",
    }
    body = tar_bytes([({"name": n}, t.encode()) for n, t in files.items()])
    client = eng.client()
    try:
        image, logs = client.images.build(
            fileobj=io.BytesIO(body), custom_context=True, tag="ign:1", network_mode="none", rm=True
        )
        assert "ign:1" in image.tags
        assert any("Successfully built" in (m.get("stream") or "") for m in logs)
    finally:
        client.close()
    listing = run_out(eng, "ign:1", "find", "/ctx", "-type", "f")
    assert sorted(listing.split()) == ["/ctx/.dockerignore", "/ctx/Dockerfile", "/ctx/keep.log", "/ctx/sub/ok.txt"]


def test_docker_py_build_with_buildargs_and_streamed_output(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nARG V\nRUN echo value=$V\n"})
    client = eng.client()
    try:
        image, logs = client.images.build(path=str(ctx), tag="py:1", buildargs={"V": "42"}, network_mode="none")
        text = "".join(m.get("stream") or "" for m in logs)
        assert "value=42" in text and image.id.startswith("sha256:")
        with pytest.raises(Exception) as err:
            client.images.build(
                path=str(write_context(tmp_path / "bad", {"Dockerfile": "FROM busybox\nRUN false\n"})),
                network_mode="none",
            )
        assert "returned a non-zero code: 1" in str(err.value)
    finally:
        client.close()


# -- hostile input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "member, expected",
    [
        ({"name": "../escape.txt"}, "contains '..'"),
        ({"name": "/abs.txt"}, "is absolute"),
        ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc/shadow"}, "absolute path"),
        ({"name": "up", "type": tarfile.SYMTYPE, "linkname": "../../../../etc"}, "link"),
        ({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../../etc/passwd"}, ""),
    ],
)
def test_escaping_context_is_refused_with_400(eng, member, expected):
    before = set(os.listdir(eng.dir / "data"))
    body = tar_bytes([({"name": "Dockerfile"}, b"FROM busybox\nCOPY . /x/\n"), (member, b"data")])
    status, _, payload = post_build(eng, body)
    assert status == 400, payload
    assert expected in json.loads(payload)["message"]
    assert not Path("/escape.txt").exists() and not Path("/abs.txt").exists()
    assert set(os.listdir(eng.dir / "data")) == before
    assert not os.listdir(eng.dir / "data" / "build" / "tmp")  # the context is gone
    assert_alive(eng)


def test_dockerfile_paths_never_name_host_files(eng, tmp_path):
    marker = Path("/tmp") / ("dy-host-" + uuid.uuid4().hex)
    marker.mkdir()
    (marker / "secret").write_text("host secret\n")
    try:
        # COPY sources outside the context, by `..` or through the query's dockerfile name.
        for df in ("FROM busybox\nCOPY ../../../../%s/secret /s\n" % marker, "FROM busybox\nCOPY /../secret /s\n"):
            status, _, payload = post_build(eng, tar_bytes([({"name": "Dockerfile"}, df.encode())]))
            msgs = messages(payload) if status == 200 else [json.loads(payload)]
            assert any(
                "Forbidden path outside the build context" in (m.get("message") or m.get("error") or "")
                or "file not found" in (m.get("error") or m.get("message") or "")
                for m in msgs
            ), msgs
        status, _, payload = post_build(
            eng, tar_bytes([({"name": "Dockerfile"}, b"FROM busybox\n")]), "dockerfile=../../../../%s/secret" % marker
        )
        assert status == 400 and b"Forbidden path" in payload
        # A stage plants links to host paths; COPY --from and COPY into them stay inside the image.
        df = (
            "FROM busybox AS evil\n"
            "RUN ln -s %s/secret /leak && ln -s %s /dst\n"
            "FROM busybox\n"
            "COPY --from=evil /leak /got\n" % (marker, marker)
        )
        status, _, payload = post_build(eng, tar_bytes([({"name": "Dockerfile"}, df.encode())]))
        assert status == 200
        assert "file not found" in messages(payload)[-1]["error"]
        df = "FROM busybox\nRUN ln -s %s /dst\nCOPY a.txt /dst/\n" % marker
        status, _, payload = post_build(
            eng,
            tar_bytes([({"name": "Dockerfile"}, df.encode()), ({"name": "a.txt"}, b"x")]),
            "t=linkdst:1&networkmode=none",
        )
        assert status == 200 and messages(payload)[-1]["stream"].startswith("Successfully tagged"), payload
        assert sorted(os.listdir(marker)) == ["secret"]  # nothing written on the host
        assert run_out(eng, "linkdst:1", "cat", str(marker) + "/a.txt") == "x"
    finally:
        for child in marker.iterdir():
            child.unlink()
        marker.rmdir()
    assert_alive(eng)


def test_bad_dockerfiles_are_plain_400s(eng):
    for df, text in (
        (b"FROM busybox\nFOO bar\n", "unknown instruction: FOO"),
        (b"RUN true\n", "no build stage in current context"),
        (b"FROM busybox\nRUN --mount=type=cache,target=/x true\n", "requires BuildKit"),
    ):
        status, _, payload = post_build(eng, tar_bytes([({"name": "Dockerfile"}, df)]))
        body = payload.decode()
        assert status in (400, 501) or '"error"' in body, body
        assert text in body
    status, _, payload = post_build(
        eng, tar_bytes([({"name": "Dockerfile"}, b"FROM --platform=windows/amd64 busybox\n")])
    )
    assert "is not supported by this engine" in payload.decode()
    assert_alive(eng)


def test_buildkit_endpoints_say_how_to_build(eng):
    for path in ("/session", "/grpc"):
        status, headers, payload = http_get(path, unix=eng.sock, method="POST", body=b"")
        assert status == 501 and headers["content-type"] == "application/json"
        assert "DOCKER_BUILDKIT=0" in json.loads(payload)["message"]
    status, headers, _ = http_get("/_ping", unix=eng.sock)
    assert headers["builder-version"] == "1"


def test_cache_from_after_builder_prune_and_step_container_removal(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo step > /f\nCOPY a /a\n", "a": "1"})
    build(eng, ctx, "-t", "cf:1")
    image_id = eng.docker("image", "inspect", "-f", "{{.Id}}", "cf:1").stdout.strip()
    status, _, payload = http_get("/v1.50/build/prune", unix=eng.sock, method="POST", body=b"")
    assert status == 200 and image_id in json.loads(payload)["CachesDeleted"]
    p = build(eng, ctx, "--cache-from", "cf:1", "-t", "cf:2")
    assert p.stdout.count("Using cache") == 2 and "Running in" not in p.stdout
    assert eng.docker("image", "inspect", "-f", "{{.Id}}", "cf:2").stdout.strip() == image_id
    assert "Using cache" not in build(eng, ctx, "--no-cache").stdout
    status, _, payload = http_get("/v1.50/build/prune", unix=eng.sock, method="POST", body=b"")
    assert "Using cache" not in build(eng, ctx).stdout  # the cache index was emptied
    # --rm=false keeps the step containers, --force-rm removes even a failed step's.
    before = set(eng.docker("ps", "-aq", "--no-trunc").stdout.split())
    build(eng, ctx, "--no-cache", "--rm=false")
    kept = set(eng.docker("ps", "-aq", "--no-trunc").stdout.split()) - before
    assert len(kept) == 1
    eng.docker("rm", *kept)
    failing = write_context(tmp_path / "fail", {"Dockerfile": "FROM busybox\nRUN exit 2\n"})
    build(eng, failing, "--force-rm", check=False)
    assert set(eng.docker("ps", "-aq", "--no-trunc").stdout.split()) == before


def test_add_url(eng, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "file.txt").write_text("downloaded\n")
    pid = int((eng.dir / "engine.pid").read_text().split()[0])
    port = 18000 + os.getpid() % 1000
    # The engine lives in its own network namespace: serve the file there.
    server = subprocess.Popen(
        ["nsenter", "-t", str(pid), "-n", "python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=served,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "lo", "up"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [
                    "nsenter",
                    "-t",
                    str(pid),
                    "-n",
                    "python3",
                    "-c",
                    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/file.txt', timeout=1)",
                ],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        df = f"FROM busybox\nADD http://127.0.0.1:{port}/file.txt /dl/\nADD http://127.0.0.1:{port}/file.txt /named\n"
        build(eng, write_context(tmp_path / "ctx", {"Dockerfile": df}), "-t", "url:1")
        out = run_out(eng, "url:1", "sh", "-c", "cat /dl/file.txt /named; stat -c %a /named")
        assert out == "downloaded\ndownloaded\n600\n"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_client_going_away_stops_the_running_step(eng):
    df = b"FROM busybox\nRUN while true; do echo tick; sleep 0.2; done\n"
    body = tar_bytes([({"name": "Dockerfile"}, df)])
    before = set(eng.docker("ps", "-aq", "--no-trunc").stdout.split())
    s = socket.socket(socket.AF_UNIX)
    s.connect(eng.sock)
    s.sendall(
        b"POST /v1.50/build?networkmode=none HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    seen = b""
    while b'"stream":"tick' not in seen:
        chunk = s.recv(65536)
        assert chunk, seen
        seen += chunk
    s.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if set(eng.docker("ps", "-aq", "--no-trunc").stdout.split()) == before:
            break
        time.sleep(0.2)
    assert set(eng.docker("ps", "-aq", "--no-trunc").stdout.split()) == before
    assert_alive(eng)


def test_build_steps_are_hidden_images_that_go_with_their_image(eng, tmp_path):
    df = "FROM busybox\nENV A=1\nRUN echo x > /x\nCOPY f /f\n"
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df, "f": str(uuid.uuid4())})
    existing = set(eng.docker("images", "-aq", "--no-trunc").stdout.split())
    build(eng, ctx, "-t", "steps:1")
    listed = eng.docker("images", "-q", "--no-trunc").stdout.split()
    every = eng.docker("images", "-aq", "--no-trunc").stdout.split()
    image_id = eng.docker("image", "inspect", "-f", "{{.Id}}", "steps:1").stdout.strip()
    step_ids = set(every) - set(listed) - existing
    assert image_id in listed and len(step_ids) == 2  # the ENV and RUN steps: hidden without -a
    parent = sorted(step_ids)[0]
    p = eng.docker("rmi", parent, check=False)
    assert p.returncode != 0 and "image has dependent child images" in p.stderr
    eng.docker("image", "prune", "-f")
    assert step_ids <= set(eng.docker("images", "-aq", "--no-trunc").stdout.split())  # prune leaves them
    out = eng.docker("rmi", "steps:1").stdout
    assert out.count("Deleted:") == 3  # the image and its two untagged steps
    left = set(eng.docker("images", "-aq", "--no-trunc").stdout.split())
    assert not (step_ids & left) and image_id not in left
    busybox = eng.docker("image", "inspect", "-f", "{{.Id}}", "busybox").stdout.strip()
    assert busybox in left  # tagged parents stay


def test_cli_without_buildkit_variable_falls_back_and_dockerfile_flag_and_iidfile(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"sub/Alt.dockerfile": "FROM busybox\nCOPY x /x\n", "x": "alt\n"})
    iid = tmp_path / "iid"
    env = eng.env()  # no DOCKER_BUILDKIT: the CLI without buildx falls back to the classic builder
    p = subprocess.run(
        ["docker", "build", "-f", str(ctx / "sub/Alt.dockerfile"), "--iidfile", str(iid), "-t", "alt:1", str(ctx)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "legacy builder is deprecated" in p.stderr
    assert iid.read_text() == eng.docker("image", "inspect", "-f", "{{.Id}}", "alt:1").stdout.strip()
    assert run_out(eng, "alt:1", "cat", "/x") == "alt\n"


def test_build_on_a_remapped_engine_keeps_the_containers_ids_in_layers(tmp_path):
    with remapping_engine() as e:
        df = "FROM busybox\nRUN mkdir /made && touch /made/f && chown 7:8 /made/f\nCOPY --chown=5:6 a /a\nCOPY b /b\n"
        ctx = write_context(tmp_path / "ctx", {"Dockerfile": df, "a": "a", "b": "b"})
        build(e, ctx, "-t", "remap:1")
        out = run_out(e, "remap:1", "stat", "-c", "%u:%g %n", "/made", "/made/f", "/a", "/b")
        assert out == "0:0 /made\n7:8 /made/f\n5:6 /a\n0:0 /b\n"


def test_deletions_and_replaced_directories_become_whiteouts(eng, tmp_path):
    df = (
        "FROM busybox\n"
        "RUN mkdir -p /d/sub && echo old > /d/sub/f && echo keep > /k && ln /k /k2\n"
        "RUN rm /k && rm -rf /d && mkdir -p /d/new && echo new > /d/new/g && rm /bin/rmdir\n"
    )
    build(eng, write_context(tmp_path / "ctx", {"Dockerfile": df}), "-t", "wh:1")
    out = run_out(eng, "wh:1", "sh", "-c", "ls /k /k2 /bin/rmdir 2>&1; find /d | sort; cat /k2")
    lines = out.splitlines()
    assert "ls: /k: No such file or directory" in lines and "ls: /bin/rmdir: No such file or directory" in lines
    assert "/k2" in lines and lines[-1] == "keep"
    assert [x for x in lines if x.startswith("/d")] == ["/d", "/d/new", "/d/new/g"]
    # The layers carry OCI whiteouts, as `docker save` shows them.
    with tarfile.open(
        fileobj=io.BytesIO(
            subprocess.run(["docker", "save", "wh:1"], capture_output=True, env=eng.env(), check=True).stdout
        )
    ) as outer:
        names = []
        for member in outer.getmembers():
            if member.name.endswith(".tar") or member.name.startswith("blobs/"):
                data = outer.extractfile(member)
                if data is None:
                    continue
                try:
                    with tarfile.open(fileobj=io.BytesIO(data.read())) as layer:
                        names += layer.getnames()
                except tarfile.TarError:
                    continue
    assert ".wh.k" in names and "bin/.wh.rmdir" in names and "d/.wh..wh..opq" in names


def test_run_steps_get_the_build_limits_extra_hosts_and_proxy_args(eng, tmp_path):
    df = "FROM busybox\nRUN grep -h builder-host /etc/hosts; echo proxy=$http_proxy\n"
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    before = set(eng.docker("ps", "-aq").stdout.split())
    p = build(
        eng,
        ctx,
        "--rm=false",
        "--memory",
        "64m",
        "--add-host",
        "builder-host:10.1.2.3",
        "--build-arg",
        "http_proxy=http://p:3128",
    )
    assert "10.1.2.3\tbuilder-host" in p.stdout
    assert "proxy=http://p:3128" in p.stdout and "not consumed" not in p.stdout
    (kept,) = set(eng.docker("ps", "-aq").stdout.split()) - before
    assert eng.docker("inspect", "-f", "{{.HostConfig.Memory}}", kept).stdout.strip() == str(64 << 20)
    eng.docker("rm", kept)
    # The proxy is no part of the image's history (nor of RUN's cache key).
    image = p.stdout.split("Successfully built ")[1].split()[0]
    assert "http://p:3128" not in eng.docker("history", "--no-trunc", image).stdout


def test_history_shows_the_step_images(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": 'FROM busybox\nENV H=1\nRUN echo h > /h\nCMD ["sh"]\n'})
    p = build(eng, ctx, "-t", "hist:1")
    steps = [line[6:] for line in p.stdout.splitlines() if line.startswith(" ---> ") and len(line) == 18]
    rows = eng.docker("history", "-q", "hist:1").stdout.split()
    assert rows[:4] == [steps[3], steps[2], steps[1], steps[0]]  # CMD, RUN, ENV, then busybox itself


def test_the_same_layer_twice_in_one_image(eng, tmp_path):
    # Both COPYs commit the very same diff: overlayfs takes a lower dir once only (ELOOP otherwise).
    df = "FROM busybox\nCOPY a /a\nRUN rm /a\nCOPY a /a\nRUN cat /a\n"
    p = build(eng, write_context(tmp_path / "ctx", {"Dockerfile": df, "a": "twice\n"}), "-t", "twice:1")
    assert "twice\n" in p.stdout
    diff_ids = json.loads(eng.docker("image", "inspect", "twice:1").stdout)[0]["RootFS"]["Layers"]
    assert len(diff_ids) == 4 and diff_ids[1] == diff_ids[3]
    assert run_out(eng, "twice:1", "cat", "/a") == "twice\n"


def test_dockerfile_from_stdin_and_compressed_context(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"x": "ctx file\n"})
    env = eng.env()
    env["DOCKER_BUILDKIT"] = "0"
    df = "FROM busybox\nCOPY . /c/\nRUN ls -a /c\n"
    for args in (["-f-", str(ctx)], ["--compress", "-f-", str(ctx)], ["-"]):
        p = subprocess.run(
            ["docker", "build", "--network", "none", "-t", "stdin:1", *args],
            input=df if args != ["-"] else "FROM busybox\nRUN echo only-a-dockerfile\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        if args == ["-"]:
            assert "only-a-dockerfile" in p.stdout
        else:
            # The Dockerfile the CLI added under a random name (and .dockerignore) are .dockerignored.
            assert run_out(eng, "stdin:1", "ls", "-a", "/c").split() == [".", "..", "x"]


def test_from_pulls_a_missing_image_and_pull_flag(eng, tmp_path):
    registry_bin = shutil.which("docker-registry")
    if registry_bin is None:
        pytest.skip("needs docker-registry")
    pid = (eng.dir / "engine.pid").read_text().split()[0]
    in_engine_net = ["nsenter", "-t", pid, "-n"]
    subprocess.run(in_engine_net + ["ip", "link", "set", "lo", "up"], check=True)
    port = 15000 + os.getpid() % 1000
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/reg\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    # The registry lives in the engine's network namespace (the engine pulls from loopback only).
    reg = subprocess.Popen(in_engine_net + [registry_bin, "serve", str(cfg)], stdout=subprocess.DEVNULL)
    repo_root = str(Path(__file__).resolve().parents[2])
    push = (
        "import time, socket\n"
        "from tests.engine.test_images_pull import push, busybox_parts\n"
        "for _ in range(200):\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).close(); break\n"
        "    except OSError: time.sleep(0.05)\n"
        "c, layers = busybox_parts()\n"
        f"push('127.0.0.1:{port}', 'team/bb', '1', c, layers)\n"
    )
    try:
        subprocess.run(
            in_engine_net + [sys.executable, "-c", push],
            cwd=repo_root,
            env=dict(os.environ, PYTHONPATH=repo_root),
            check=True,
            timeout=60,
        )
        ref = f"127.0.0.1:{port}/team/bb:1"
        ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {ref}\nRUN echo pulled-base\n"})
        p = build(eng, ctx, "-t", "pulled:1")
        assert "Pulling from team/bb" in p.stdout and "pulled-base" in p.stdout
        assert eng.docker("image", "inspect", ref).returncode == 0
        p = build(eng, ctx, "--pull", "-t", "pulled:2")
        assert "Image is up to date" in p.stdout and "Using cache" in p.stdout
    finally:
        reg.kill()
        reg.wait()


def test_cache_survives_an_engine_restart(eng, tmp_path):
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo restart-step > /r\n"})
    build(eng, ctx, "-t", "restart:1")
    eng.restart()
    p = build(eng, ctx, "-t", "restart:2")
    assert "Using cache" in p.stdout and "Running in" not in p.stdout
    assert not os.listdir(eng.dir / "data" / "build" / "tmp")
