#!/usr/bin/env python3
"""Benchmark: a new user's first container. `dockyard create` with no flags (a cached Debian cloud image) until
`docker run --rm busybox true` answers, next to the peer Lima would be if it were here (`limactl` is not packaged
for this host): a plain qemu command booting the same image with the same CPUs and memory, then Debian's dockerd
(docker.io 20.10 of the "docker" test rootfs variant, shared read-only into the VM over virtio-9p and run in a
chroot of it) until the same `docker run` answers. One VM at a time.

    python3 bench/qemu_docker_run.py [--runs N] [--accel tcg|kvm]

Both sides start from a cached image and load the same busybox archive (`docker load`) before the run: the VMs
have no network but their 127.0.0.1 forwards (restrict=on), so nothing is pulled. The stand-in for Debian's cloud
image is built from the cached test guest image and served from 127.0.0.1, as tests/integration/test_local_machine.py
does; dockyard's download cache is filled before the first timed run. Prints each side's breakdown and the ratio
dockyard / peer (lower is better; no target in issue 11, this is the side-by-side figure).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dockyard.drivers.guestimage import build, debian, resources, seed  # noqa: E402
from dockyard.drivers.qemu import boot  # noqa: E402
from dockyard.provisioner.core.ssh import SSHSession  # noqa: E402
from dockyard.provisioner.core.ssh_keys import generate_keypair  # noqa: E402
from dockyard.provisioner.core.ssh_target import SSHTarget  # noqa: E402
from tests.hosts import rootfs  # noqa: E402
from tests.images import busybox_tar  # noqa: E402
from tests.integration import local_image  # noqa: E402

CACHE = os.environ.get("DOCKYARD_IMAGE_CACHE") or "/var/cache/dockyard-tests/images"
MEMORY_MB = 2048  # dockyard's defaults (no flags), given to the peer too
CPUS = resources.default_cpus()
DOCKER = shutil.which("docker") or "docker"


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def image_server(image):
    """Debian's file names for a stand-in of its cloud image, on 127.0.0.1."""
    out = os.path.join(CACHE, "debian-like-" + os.path.basename(os.path.dirname(image.disk)))
    local_image.build_like_debian(image, out)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=out))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what, check, timeout, step=0.5):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# ----- dockyard ------------------------------------------------------------------------------------------------


def dockyard_side(base, work, accel):
    """`dockyard create` (no flags), then docker load and `docker run --rm busybox true` through its env."""
    store = os.path.join(work, "store")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        DOCKYARD_IMAGE_CACHE=CACHE,
        DOCKER_CONFIG=os.path.join(work, "docker-config"),
        QEMU_RESTRICT="1",  # network safety: the VM reaches nothing but its 127.0.0.1 forwards (not a flag)
        QEMU_ACCEL=accel,
        **{debian.URL_BASE_ENV: base},
    )
    cli = [sys.executable, "-m", "dockyard", "--storage-path", store]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cli + ["create"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
        created = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(f"dockyard create failed:\n{p.stdout}\n{p.stderr}")
        shell = subprocess.run(cli + ["env", "--shell", "bash"], capture_output=True, text=True, env=env, check=True)
        for line in shell.stdout.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                env[key] = value.strip('"')
        load_run = docker_load_and_run([DOCKER], env)
        with open(os.path.join(store, "machines", "default", "config.json")) as f:
            timings = json.load(f)["Driver"]["Timings"]
        return {"total": time.monotonic() - t0, "create": created, "boot_to_ssh": timings["BootToSSH"], **load_run}
    finally:
        subprocess.run(cli + ["rm", "-f", "-y", "default"], capture_output=True, env=env, cwd=ROOT, timeout=300)


def docker_load_and_run(docker_argv, env=None):
    """Seconds of `docker load` of busybox and of the first `docker run --rm busybox true`."""
    t = time.monotonic()
    with open(busybox_tar(), "rb") as f:
        subprocess.run(docker_argv + ["load"], stdin=f, capture_output=True, env=env, check=True, timeout=600)
    loaded = time.monotonic() - t
    t = time.monotonic()
    subprocess.run(
        docker_argv + ["run", "--rm", "busybox", "true"], capture_output=True, env=env, check=True, timeout=600
    )
    return {"load": loaded, "run": time.monotonic() - t}


# ----- the peer: plain qemu + Debian's dockerd ----------------------------------------------------------------

# In the guest, as root: Debian's docker.io from the 9p share, on a tmpfs overlay, chrooted; its data on the
# guest's ext4 disk (overlay2 needs a real upper file system). Kernel modules load through the guest's modprobe.
PEER_SETUP = r"""set -eu
mkdir -p /peer-ro /peer-up /peer /var/lib/peer-docker
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro dockerfs /peer-ro
mount -t tmpfs tmpfs /peer-up && mkdir -p /peer-up/u /peer-up/w
mount -t overlay overlay -o lowerdir=/peer-ro,upperdir=/peer-up/u,workdir=/peer-up/w /peer
for d in proc sys dev run; do mount --rbind /$d /peer/$d; done
mkdir -p /peer/var/lib/docker && mount --bind /var/lib/peer-docker /peer/var/lib/docker
# The guest kernel has AppArmor, the rootfs no apparmor_parser: dockerd sees it off, as the dockyard engine
# ignores it (both run containers without an AppArmor profile).
aa=/peer/sys/module/apparmor/parameters/enabled
if [ -e $aa ]; then echo N > /run/peer-apparmor-off && mount --bind /run/peer-apparmor-off $aa; fi
# DOCKER_RAMDISK: runc moves into containers' roots without pivot_root, which a chroot cannot do.
setsid chroot /peer sh -c 'DOCKER_RAMDISK=true exec dockerd -H unix:///run/docker.sock >/var/log/dockerd.log 2>&1' \
    </dev/null >/dev/null 2>&1 &
"""


def peer_side(image, docker_rootfs, work, accel):
    """The same image booted by a hand-written qemu command, then dockerd started over SSH and used in the VM."""
    key = os.path.join(work, "id_ed25519")
    pub = generate_keypair(key, comment="bench-peer")
    disk, iso, serial, pidfile = (os.path.join(work, n) for n in ("peer.qcow2", "seed.iso", "serial.log", "peer.pid"))
    mac, port = "52:54:00:12:34:57", free_port()
    seed.write_seed(iso, seed.render("peer", seed.instance_id("peer"), pub, [seed.nic("eth0", mac)]))
    t0 = time.monotonic()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.disk, disk, "20G"], check=True
    )
    argv = ["qemu-system-x86_64", "-accel", accel, "-m", str(MEMORY_MB), "-smp", str(CPUS), "-display", "none"]
    argv += ["-drive", f"file={disk},if=virtio,format=qcow2", "-drive", f"file={iso},if=virtio,format=raw,readonly=on"]
    argv += ["-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"]
    argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}", "-device", "virtio-rng-pci"]
    argv += ["-virtfs", f"local,path={docker_rootfs},mount_tag=dockerfs,security_model=none,readonly=on,id=dockerfs"]
    argv += ["-serial", f"file:{serial}", "-monitor", "none", "-pidfile", pidfile, "-daemonize"]
    subprocess.run(argv, check=True)
    try:
        target = SSHTarget("127.0.0.1", port, "docker", key, None, "peer")
        until("SSH log-in", lambda: boot.ssh_banner("127.0.0.1", port) and (SSHSession(target).close() or True), 900)
        booted = time.monotonic() - t0
        with SSHSession(target) as s:
            s.run(PEER_SETUP, sudo=True)
            docker = "sudo chroot /peer docker"
            until("dockerd", lambda: s.run(f"{docker} version", check=False).exit_status == 0, 600)
            ready = time.monotonic() - t0
            t = time.monotonic()
            with open(busybox_tar(), "rb") as f:
                s.run(f"{docker} load", input=f.read(), timeout=600)
            loaded = time.monotonic() - t
            t = time.monotonic()
            s.run(f"{docker} run --rm busybox true", timeout=600)
            ran = time.monotonic() - t
        return {
            "total": time.monotonic() - t0,
            "boot_to_ssh": booted,
            "dockerd": ready - booted,
            "load": loaded,
            "run": ran,
        }
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open(pidfile) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGKILL)
            until(
                "the peer VM to exit",
                lambda: not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3],
                30,
                0.1,
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    args = ap.parse_args()
    if shutil.which("limactl"):
        print("note: limactl is installed, but this benchmark compares against plain qemu + dockerd only")
    for tool in ("qemu-system-x86_64", "qemu-img", "docker"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run .ci/vm-deps.sh")
    os.environ.setdefault(build.CACHE_ENV, CACHE)
    guest = build.ensure_image(os.path.dirname(CACHE), log=print)
    docker_rootfs = rootfs.ensure_rootfs(log=print, variant="docker")
    busybox_tar()
    print(f"{CPUS} vCPU(s), {MEMORY_MB} MiB each side; accel {args.accel}")
    with image_server(guest) as base:
        # dockyard's download cache, filled (once) before timing: "a cached image"
        image = debian.ensure(base, os.path.dirname(CACHE), print)
        dys, peers = [], []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as work:
                peer = peer_side(image, str(docker_rootfs), work, args.accel)
            with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as work:
                dy = dockyard_side(base, work, args.accel)
            peers.append(peer["total"])
            dys.append(dy["total"])
            print(
                f"run {i + 1}: dockyard {dy['total']:.1f}s = create {dy['create']:.1f}s (boot to SSH "
                f"{dy['boot_to_ssh']:.1f}s) + docker load {dy['load']:.1f}s + docker run {dy['run']:.1f}s"
            )
            print(
                f"        qemu + dockerd {peer['total']:.1f}s = boot to SSH {peer['boot_to_ssh']:.1f}s + dockerd up "
                f"{peer['dockerd']:.1f}s + docker load {peer['load']:.1f}s + docker run {peer['run']:.1f}s"
            )
    ratio = statistics.median(dys) / statistics.median(peers)
    print(
        f"median: dockyard {statistics.median(dys):.1f}s, qemu + dockerd {statistics.median(peers):.1f}s, "
        f"ratio {ratio:.2f} (below 1: dockyard answers first)"
    )


if __name__ == "__main__":
    main()
