"""Build, registry and compose workflows: the dockyard engine against Debian's dockerd 20.10, in one run, on
the same test host (bench/peers.py), with the same images and inputs, the two engines interleaved per round.

(1) `DOCKER_BUILDKIT=0 docker build` of one multi-step Dockerfile (COPY, ADD of a local tar, RUN, ENV, ARG,
    WORKDIR, USER, LABEL, EXPOSE, HEALTHCHECK, CMD) from a generated context: a cold build (--no-cache) and
    a fully cached rebuild. Targets: cold <= 1.0x dockerd, cached <= 0.5x.
(2) `docker push` then (after `docker rmi` of the image) `docker pull` of the same ~100 MB image (busybox
    and four layers: two of random bytes, two of text) through Debian's docker-registry on 127.0.0.1 inside
    the host's namespace, plain HTTP, a fresh registry per push. Target: push + pull <= 1.0x.
(3) Debian's docker-compose 1.29 with the three-service app of tests/engine/test_compose_app.py (its files,
    used in place): `up -d` until kv and web are healthy and the one-shot job has exited 0, then `down -v`.
    The app's images are built before the timing. Target: <= 0.5x for each.

Run as root: python3 -m bench.ecosystem_vs_dockerd [--rounds N] [--only build,registry,compose]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import shutil
import signal
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import tests.engine
from bench.peers import BenchError, Peers, clean_env, die_with_parent, wait_until
from tests.images import busybox_binary, busybox_layer, busybox_tar, image_config, layer_tar, python_tar, write_archive

WORKFLOWS = ("build", "registry", "compose")
ENGINES = ("dockyard", "dockerd")
TARGETS = {"build cold": 1.0, "build cached": 0.5, "push + pull": 1.0, "compose up": 0.5, "compose down": 0.5}
COMPOSE_APP = Path(tests.engine.__file__).parent / "data" / "compose_app"
COMPOSE_PROJECT = "cmpbench"
HEALTH_INTERVAL = 1.0  # the app's healthcheck interval (its Dockerfile and docker-compose.yml)
REGISTRY_BIN = "/usr/bin/docker-registry"
REGISTRY = "127.0.0.1:5000"  # loopback inside the test host's namespace: both engines treat it as insecure
BIG_IMAGE = "bench/big:latest"
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}

DOCKERFILE = """\
# bench/ecosystem_vs_dockerd.py: one multi-step build, every kind of step the classic builder caches
FROM busybox:latest
ARG GREETING=hello
ENV APP_HOME=/srv/app LANG=C.UTF-8
LABEL org.dockyard.bench=build
WORKDIR /srv/app
COPY src/ ./src/
COPY assets/ ./assets/
ADD bundle.tar /srv/bundle/
RUN mkdir -p gen && for i in $(seq 1 300); do echo "$GREETING $i" > gen/f$i; done
RUN find /srv -type f | sort | xargs sha256sum > /srv/manifest.txt && wc -l /srv/manifest.txt
RUN dd if=/dev/zero of=/srv/app/blob bs=1024 count=8192 2>/dev/null && sha256sum /srv/app/blob
COPY config.txt ./
USER nobody
EXPOSE 8080
HEALTHCHECK --interval=30s CMD true
CMD ["sh", "-c", "cat /srv/app/config.txt"]
"""


# ----- inputs (pure, deterministic) ----------------------------------------------------------------------


def write_build_context(root: Path, small_files: int = 200, assets: int = 4, asset_kb: int = 1024) -> int:
    """The Dockerfile and its context under root: small source files in subdirectories, random assets, a tar
    for ADD to unpack, a config file. The same bytes every time; returns the number of files written."""
    rng = random.Random(10)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    (root / ".dockerignore").write_text("*.tmp\n")
    (root / "config.txt").write_text("greeting from the bench build\n")
    (root / "scratch.tmp").write_text("ignored by .dockerignore\n")
    count = 4
    for i in range(small_files):
        path = root / "src" / f"pkg{i % 10}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"VALUE_{i}_{j} = {rng.randrange(10**9)}\n" for j in range(80)))
        count += 1
    (root / "assets").mkdir(exist_ok=True)
    for i in range(assets):
        (root / "assets" / f"asset{i}.bin").write_bytes(rng.randbytes(asset_kb * 1024))
        count += 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(50):
            data = f"bundled file {i}\n".encode() * 40
            info = tarfile.TarInfo(f"bundle/part{i}.txt")
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    (root / "bundle.tar").write_bytes(buf.getvalue())
    return count + 1


def pseudo_text(rng: random.Random, size: int) -> bytes:
    """size bytes of text-like lines (gzip takes them to about a third, like sources and configs)."""
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 10))) for _ in range(800)]
    block = "".join(" ".join(rng.choices(vocab, k=12)) + "\n" for _ in range(20000)).encode()
    # distinct blocks beyond deflate's 32 KiB window: no cheaper to compress than one long text
    out = b"".join(b"# part %d\n" % n + block for n in range(size // len(block) + 1))
    return out[:size]


def big_image_layers(total_mb: int, layers: int = 4, seed: int = 100) -> list[bytes]:
    """`layers` uncompressed layer tars, total_mb MB together: random bytes (binaries, archives: nothing to
    compress) and text in turn; the same bytes for the same arguments."""
    rng = random.Random(seed)
    size = total_mb * 1024 * 1024 // layers
    return [
        layer_tar([(f"data/part{i}.bin", "file", rng.randbytes(size) if i % 2 == 0 else pseudo_text(rng, size), 0o644)])
        for i in range(layers)
    ]


def write_big_image(out: Path, total_mb: int) -> str:
    """A docker-archive of busybox plus big_image_layers, tagged BIG_IMAGE; its image id (sha256:...)."""
    base = busybox_layer(busybox_binary().read_bytes())
    layers = [base, *big_image_layers(total_mb)]
    config = image_config(["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers])
    write_archive(out, [(config, layers, [BIG_IMAGE])])
    return "sha256:" + hashlib.sha256(config).hexdigest()


# ----- reporting (pure) ------------------------------------------------------------------------------------


def ratio_line(label: str, ours: float, theirs: float, target: float | None = None) -> str:
    """One row: both medians in seconds, the ratio, and whether it meets the target."""
    ratio = ours / theirs if theirs else float("inf")
    if target is None:
        verdict = "(info)"
    elif ratio <= target:
        verdict = f"<= {target}x  MET"
    else:
        verdict = f"<= {target}x  MISSED by {ratio / target:.2f}x"
    return f"{label:<34} {ours:>9.2f} {theirs:>9.2f} {ratio:>7.2f}x  {verdict}"


def interleaved(rounds: int, engines=ENGINES) -> list[tuple[int, str]]:
    """(round, engine) in the order they run: alternating which engine goes first, so neither always
    runs on a machine the other just warmed up or loaded."""
    order = []
    for i in range(rounds):
        for name in engines if i % 2 == 0 else tuple(reversed(engines)):
            order.append((i, name))
    return order


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per engine and measurement (default 3)")
    ap.add_argument("--image-mb", type=int, default=100, help="size of the pushed and pulled image (default 100)")
    ap.add_argument(
        "--only",
        default=",".join(WORKFLOWS),
        help="comma-separated subset of %s (default: all)" % ",".join(WORKFLOWS),
    )
    args = ap.parse_args(argv)
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in args.only if w not in WORKFLOWS]
    if unknown or not args.only:
        ap.error("--only takes a comma-separated subset of %s, not %r" % (",".join(WORKFLOWS), ",".join(unknown)))
    if args.rounds < 1 or args.image_mb < 1:
        ap.error("--rounds and --image-mb must be >= 1")
    return args


# ----- measurements ------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def checked(p: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if p.returncode != 0:
        raise BenchError(f"{what} exited {p.returncode}:\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    return p


def bench_build(peers: Peers, rounds: int, log) -> dict[str, dict[str, list[float]]]:
    ctx = Path(tempfile.mkdtemp(prefix="dockyard-bench-build-"))
    peers.defer("build context", lambda: shutil.rmtree(ctx, ignore_errors=True))
    files = write_build_context(ctx)
    log(f"(1) build: {DOCKERFILE.count(chr(10)) - 1}-line Dockerfile, {files} files in the context; {rounds} rounds")
    out: dict[str, dict[str, list[float]]] = {"build cold": {}, "build cached": {}}

    def build(name, *flags):
        p = peers.docker(name, "build", *flags, "-t", "bench/built:latest", str(ctx), timeout=600, env=BUILD_ENV)
        return checked(p, f"docker build {' '.join(flags)} on {name}")

    for name in ENGINES:  # warm-up: page cache, the base image's first use
        build(name)
    for i, name in interleaved(rounds):
        t0 = time.perf_counter()
        cold = build(name, "--no-cache")
        out["build cold"].setdefault(name, []).append(time.perf_counter() - t0)
        if "Using cache" in cold.stdout:
            raise BenchError(f"--no-cache build on {name} used the cache")
        t0 = time.perf_counter()
        cached = build(name)
        out["build cached"].setdefault(name, []).append(time.perf_counter() - t0)
        steps = cached.stdout.count("\nStep ")
        if cached.stdout.count("Using cache") < steps - 1 or "Running in" in cached.stdout:
            raise BenchError(f"the rebuild on {name} was not fully cached:\n{cached.stdout[-2000:]}")
    return out


class Registry:
    """Debian's docker-registry on 127.0.0.1:5000 in the test host's network namespace, plain HTTP; each
    start() serves a new empty storage directory."""

    def __init__(self, netns: str):
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="dockyard-bench-registry-"))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log = open(self.dir / "registry.log", "ab")

    def start(self) -> None:
        self.stop()
        self.starts += 1
        store = self.dir / f"store{self.starts}"
        cfg = self.dir / "registry.yml"
        cfg.write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {store}\n"
            f"http:\n  addr: {REGISTRY}\n"
        )
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", REGISTRY_BIN, "serve", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=clean_env({}),
            preexec_fn=die_with_parent,
        )
        probe = f"exec 3<>/dev/tcp/{REGISTRY.replace(':', '/')}"

        def up():
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"docker-registry exited: {(self.dir / 'registry.log').read_text()[-1500:]}")
            p = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", "bash", "-c", probe], capture_output=True)
            return p.returncode == 0

        wait_until(up, 20, "docker-registry to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        for old in self.dir.glob("store*"):
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_registry(peers: Peers, rounds: int, image_mb: int, log) -> dict[str, dict[str, list[float]]]:
    tmp = Path(tempfile.mkdtemp(prefix="dockyard-bench-image-"))
    peers.defer("image archive", lambda: shutil.rmtree(tmp, ignore_errors=True))
    archive = tmp / "big.tar"
    image_id = write_big_image(archive, image_mb)
    log(f"(2) push + pull: {archive.stat().st_size / 1e6:.0f} MB image {image_id[:19]}...; {rounds} rounds")
    for name in ENGINES:
        checked(peers.docker(name, "load", "-i", str(archive), timeout=600), f"docker load on {name}")
    archive.unlink()
    if peers.host is None or not peers.host.netns:
        raise BenchError("the test host is not up")
    registry = Registry(peers.host.netns)
    peers.defer("registry", registry.close)
    out: dict[str, dict[str, list[float]]] = {"push": {}, "pull": {}, "push + pull": {}}
    for i, name in interleaved(rounds):
        ref = f"{REGISTRY}/bench/{name}-{i}:1"
        registry.start()
        checked(peers.docker(name, "tag", image_id, ref), "docker tag")
        push = timed(lambda: checked(peers.docker(name, "push", ref, timeout=600), f"docker push on {name}"))
        checked(peers.docker(name, "rmi", "-f", image_id), f"docker rmi on {name}")
        if peers.docker(name, "image", "inspect", image_id).returncode == 0:
            raise BenchError(f"{name} still has the image after rmi")
        pull = timed(lambda: checked(peers.docker(name, "pull", ref, timeout=600), f"docker pull on {name}"))
        got = checked(peers.docker(name, "image", "inspect", "-f", "{{.Id}}", ref), "inspect").stdout.strip()
        if got != image_id:
            raise BenchError(f"{name} pulled {got}, pushed {image_id}")
        for key, value in (("push", push), ("pull", pull), ("push + pull", push + pull)):
            out[key].setdefault(name, []).append(value)
    registry.close()
    return out


def compose(peers: Peers, name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = clean_env(
        {
            "DOCKER_HOST": peers.urls[name],
            "HOME": peers.cli_dir,
            "DOCKER_CONFIG": peers.cli_dir,
            "COMPOSE_PROJECT_NAME": COMPOSE_PROJECT,
            "COMPOSE_HTTP_TIMEOUT": "120",
            **BUILD_ENV,
        }
    )
    p = subprocess.run(
        ["docker-compose", "--no-ansi", *args],
        cwd=COMPOSE_APP,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return checked(p, f"docker-compose {' '.join(args)} on {name}")


def app_ready(api) -> bool:
    """kv and web running and healthy, the job exited 0 (BenchError if it failed)."""
    for svc in ("kv", "web"):
        try:
            state = api.inspect_container(f"{COMPOSE_PROJECT}_{svc}_1")["State"]
        except Exception:
            return False
        if not state.get("Running") or (state.get("Health") or {}).get("Status") != "healthy":
            return False
    try:
        job = api.inspect_container(f"{COMPOSE_PROJECT}_job_1")["State"]
    except Exception:
        return False
    if job.get("Status") == "exited" and job.get("ExitCode") != 0:
        raise BenchError(f"the app's job exited {job.get('ExitCode')}")
    return job.get("Status") == "exited"


def _compose_down(peers: Peers, name: str) -> Callable[[], object]:
    return lambda: compose(peers, name, "down", "-v")


def bench_compose(peers: Peers, rounds: int, log) -> dict[str, dict[str, list[float]]]:
    import docker

    log(f"(3) compose: the app in {COMPOSE_APP}; loading its base image, building it; {rounds} rounds")
    image = python_tar()
    apis = {}
    for name in ENGINES:
        checked(peers.docker(name, "load", "-i", str(image), timeout=900), f"docker load on {name}")
        compose(peers, name, "build")
        apis[name] = docker.APIClient(base_url=peers.urls[name], version="auto", timeout=120)
        peers.defer(f"compose app on {name}", _compose_down(peers, name))
    out: dict[str, dict[str, list[float]]] = {"compose up": {}, "compose down": {}}
    # context for both: what docker-compose itself takes to start, and the app's two health intervals
    # (kv healthy, then web; the first probe runs one interval after the start, on either engine)
    version = [
        timed(lambda: checked(subprocess.run(["docker-compose", "version"], capture_output=True, text=True), "version"))
        for _ in range(rounds)
    ]
    out["compose floor"] = {"docker-compose start": version, "health intervals": [2.0 * HEALTH_INTERVAL]}
    for _, name in interleaved(rounds):
        t0 = time.perf_counter()
        compose(peers, name, "up", "-d")
        wait_until(lambda: app_ready(apis[name]), 180, f"the app on {name} to be healthy", step=0.05)
        out["compose up"].setdefault(name, []).append(time.perf_counter() - t0)
        down = timed(lambda: compose(peers, name, "down", "-v"))
        out["compose down"].setdefault(name, []).append(down)
        left = apis[name].containers(all=True, filters={"label": f"com.docker.compose.project={COMPOSE_PROJECT}"})
        if left:
            raise BenchError(f"down left {len(left)} containers on {name}")
    return out


# ----- main ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, log) -> dict:
    results: dict = {}
    peers = Peers(log, name="ecobench")
    t0 = time.monotonic()
    try:
        peers.start()
        for name in ENGINES:
            checked(peers.docker(name, "load", "-i", str(busybox_tar()), timeout=300), f"docker load on {name}")
        results["versions"] = {
            n: peers.docker(n, "version", "--format", "{{.Server.Version}}").stdout.strip() for n in ENGINES
        }
        if "build" in args.only:
            results.update(bench_build(peers, args.rounds, log))
        if "registry" in args.only:
            results.update(bench_registry(peers, args.rounds, args.image_mb, log))
        if "compose" in args.only:
            results.update(bench_compose(peers, args.rounds, log))
        results["elapsed"] = time.monotonic() - t0
    finally:
        results["teardown_errors"] = peers.teardown()
        if results["teardown_errors"]:
            print("TEARDOWN PROBLEMS:\n  " + "\n  ".join(results["teardown_errors"]))
    return results


def report(args: argparse.Namespace, r: dict) -> None:
    v = r["versions"]
    print(
        f"\ndockyard engine {v['dockyard']} vs Debian's dockerd {v['dockerd']}, one test host, median of {args.rounds}"
    )
    print(f"{'seconds':<34} {'dockyard':>9} {'dockerd':>9} {'ratio':>8}  target")
    for key in ("build cold", "build cached", "push", "pull", "push + pull", "compose up", "compose down"):
        if key not in r:
            continue
        ours, theirs = statistics.median(r[key]["dockyard"]), statistics.median(r[key]["dockerd"])
        print(ratio_line(key, ours, theirs, TARGETS.get(key)))
        # the best round of each: the least disturbed by whatever else the machine runs
        print(ratio_line("      best round (info)", min(r[key]["dockyard"]), min(r[key]["dockerd"])))
        rounds = ", ".join(f"{n} {[round(x, 2) for x in r[key][n]]}" for n in ENGINES)
        print(f"{'':<6}rounds: {rounds}")
    floor = r.get("compose floor")
    if floor:
        start = statistics.median(floor["docker-compose start"])
        waits = {"compose up": start + floor["health intervals"][0], "compose down": start}
        print(
            f"under both compose rows, on either engine: docker-compose's own start {start:.2f} s (`docker-compose "
            f"version`, median); up also waits {floor['health intervals'][0]:.1f} s for the two health intervals"
        )
        for key, wait in waits.items():
            ours, theirs = statistics.median(r[key]["dockyard"]), statistics.median(r[key]["dockerd"])
            print(ratio_line(f"{key} minus that (info)", ours - wait, theirs - wait))
    print(f"\nbenchmark time (host up to results): {r['elapsed']:.1f} s")


def _interrupt(*_):
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears down like Ctrl-C does
    results = run(args, lambda line: print(line, flush=True))
    report(args, results)
    if results["teardown_errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
