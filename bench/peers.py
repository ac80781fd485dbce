"""The two engines a benchmark compares, side by side on one test host: the dockyard engine (provisioned by
`dockyard create -d generic` into a test host) and Debian's dockerd 20.10 (the docker.io package of the
"docker" test rootfs variant) in that host's network namespace. Both are reached over unix sockets, no TLS.

`Peers` starts the host, the engine and dockerd, and tears all of it down in reverse (also on failure);
the helpers below are shared by the benchmarks that compare the two (bench/engine_vs_dockerd.py,
bench/ecosystem_vs_dockerd.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine
from tests.hosts import netns_host, rootfs

DOCKER_CLI = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# where dockerd runs from: the docker-variant test rootfs (Debian's docker.io, containerd, runc, iptables)
DOCKERD = "/usr/sbin/dockerd"
DOCKERD_ROOT = "/var/lib/docker"

Log = Callable[[str], None]


class BenchError(RuntimeError):
    """The benchmark could not set up or measure something."""


# ----- processes, namespaces, cgroups ------------------------------------------------------------------


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the benchmark dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    """pred()'s first truthy value; BenchError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def status_int(pid: int, field: str) -> int:
    """An integer field of /proc/<pid>/status (VmRSS, PPid, ...); 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def pids_in_netns(netns: str) -> list[int]:
    ino = os.stat(f"/run/netns/{netns}").st_ino
    return [p for p in pids() if ns_inode(p, "net") == ino]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment (PATH, LANG) plus extra: nothing of the caller's DOCKER_* leaks in."""
    env = {"PATH": SYS_PATH, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def remove_cgroup_tree(name: str) -> None:
    """Kill what is left in <hierarchy>/<name> and rmdir it, deepest first, in every hierarchy."""
    trees = [p for p in Path("/sys/fs/cgroup").glob(f"*/{name}") if p.is_dir()]
    trees += [p for p in [Path("/sys/fs/cgroup", name)] if p.is_dir() and p not in trees]
    for _ in range(50):
        left = False
        for tree in trees:
            if not tree.exists():
                continue
            dirs = sorted((d for d, _, _ in os.walk(tree)), key=len, reverse=True)
            for d in dirs:
                try:
                    for pid in Path(d, "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                try:
                    os.rmdir(d)
                except OSError:
                    left = True
        if not left:
            return
        time.sleep(0.1)
    raise BenchError(f"cgroup {name} could not be removed")


def docker_cli(url: str, cli_dir: str, *args: str, timeout: float = 120, env: dict | None = None):
    """The docker CLI against url (DOCKER_HOST), its config in cli_dir; the CompletedProcess (text)."""
    full = clean_env({"DOCKER_HOST": url, "HOME": cli_dir, "DOCKER_CONFIG": cli_dir})
    full.update(env or {})
    return subprocess.run([DOCKER_CLI, *args], capture_output=True, text=True, timeout=timeout, env=full)


# ----- Debian's dockerd in the test host's network namespace --------------------------------------------


class Dockerd:
    """dockerd (+ the containerd it manages) from the docker-variant test rootfs, in the test host's
    network namespace, outside the host's pid namespace, under a temp dir.

    A private mount namespace gets an overlay of that rootfs as its root (pivot_root, so runc's setns lands
    in a container and not on the machine's /), fresh /proc, /sys, /run, /tmp, the machine's /dev and
    cgroups, and the temp dir bound at its own path (the socket is reached from outside there). dockerd
    runs with --iptables=false --ip-forward=false --ip-masq=false --bridge=none: it adds no rule anywhere
    and no device outside the host's namespace.
    """

    def __init__(self, host, root: Path):
        self.host = host
        self.root = Path(root)
        self.dir = Path(tempfile.mkdtemp(prefix="dyb-", dir="/tmp"))  # short: unix socket paths
        self.sock = str(self.dir / "docker.sock")
        self.cgroup_parent = "dockyard-bench-dockerd-" + uuid.uuid4().hex[:8]
        self.proc: subprocess.Popen | None = None
        self._log: BinaryIO | None = None

    @property
    def url(self) -> str:
        return "unix://" + self.sock

    def argv(self) -> list[str]:
        """The command line that starts dockerd (see the class doc)."""
        d, q = self.dir, shlex.quote
        overlay = f"lowerdir={self.root},upperdir={d / 'upper'},workdir={d / 'work'}"
        dockerd = [
            DOCKERD,
            "--config-file",
            str(d / "daemon.json"),
            "--data-root",
            DOCKERD_ROOT,
            "--exec-root",
            "/run/docker",
            "-H",
            self.url,
            "--pidfile",
            "/run/docker.pid",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            "--cgroup-parent",
            "/" + self.cgroup_parent,
        ]
        script = [
            "set -e",
            f"R={q(str(d / 'merged'))}",
            f'mount -t overlay overlay -o {q(overlay)} "$R"',
            'mount -t proc proc "$R/proc"',
            'mount -t sysfs sysfs "$R/sys"',
            'mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"',
            'mount --rbind /dev "$R/dev"',
            'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"',
            'mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"',
            # overlay2 refuses an overlay upper dir: the data-root is a directory of the real disk
            f'mkdir -p "$R{DOCKERD_ROOT}" "$R"{q(str(d))}',
            f'mount --bind {q(str(d / "data"))} "$R{DOCKERD_ROOT}"',
            f'mount --bind {q(str(d))} "$R"{q(str(d))}',
            'cd "$R"',
            "pivot_root . .",
            "umount -l .",
            "exec " + shlex.join(dockerd),
        ]
        (d / "run.sh").write_text("\n".join(script) + "\n")
        # nsenter and unshare (without --fork) exec, and so does the script: this PID is dockerd's
        return [
            "nsenter",
            f"--net=/run/netns/{self.host.netns}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            str(d / "run.sh"),
        ]

    def start(self, timeout: float = 60) -> None:
        if not (self.root / DOCKERD.lstrip("/")).exists():
            raise BenchError(f"{self.root} has no {DOCKERD}: not the docker-variant test rootfs")
        # the trust key 20.10 writes goes to the temp dir, not /etc/docker (a daemon.json-only setting)
        (self.dir / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.dir / "key.json")}))
        for sub in ("data", "upper", "work", "merged"):
            (self.dir / sub).mkdir()
        self._log = open(self.dir / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_env({"HOME": "/root"}),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

        def up():
            if self.proc.poll() is not None:
                raise BenchError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(self.sock)
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    return s.recv(64).startswith(b"HTTP/1.0 200") or None
            except OSError:
                return None

        try:
            wait_until(up, timeout, "dockerd to answer /_ping")
        except BenchError as e:
            raise BenchError(f"{e}\n{self.log_tail()}") from None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.dir / "dockerd.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _host_ids(self):
        """(the host's pid namespace, the PID of the host's launcher), both outside dockerd's world."""
        try:
            init = self.host.init_pid
            return ns_inode(init, "pid"), status_int(init, "PPid")
        except Exception:  # host already gone: whatever is left in its netns is dockerd's
            return None, None

    def _ours(self, host_ids):
        host_pidns, launcher = host_ids
        return [p for p in pids_in_netns(self.host.netns) if ns_inode(p, "pid") != host_pidns and p != launcher]

    def processes(self) -> list[int]:
        """dockerd's world: the host's netns outside the host's pid namespace (dockerd, containerd, shims)."""
        return self._ours(self._host_ids())

    def stop(self) -> None:
        errors = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                errors.append("dockerd ignored SIGTERM for 30 s; killed")
        left: list[int] = []
        if self.host.netns and os.path.exists(f"/run/netns/{self.host.netns}"):
            host_ids = self._host_ids()
            for _ in range(100):
                left = self._ours(host_ids)
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            else:
                errors.append(f"processes of dockerd survive SIGKILL: {left}")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log:
            self._log.close()
        # dockerd's mounts lived in its own mount namespace, gone with its last process
        mounts = [
            ln.split()[4]
            for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if ln.split()[4].startswith(str(self.dir))
        ]
        if mounts:
            errors.append(f"mounts left under {self.dir}: {mounts}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            remove_cgroup_tree(self.cgroup_parent)
        except BenchError as e:
            errors.append(str(e))
        if errors:
            raise BenchError("; ".join(errors))


# ----- the dockyard engine -----------------------------------------------------------------------------


def provision_engine(host, store: Store, cgroup_parent: str, log: Log, flags: tuple[str, ...] = ()) -> str:
    """`dockyard create -d generic` into host; the engine's unix socket URL (through the host's root)."""
    opts = machine.default_engine_options()
    # registry-pull=local: only loopback registries; own cgroup parent so it can be removed
    opts["ArbitraryFlags"] = [f"cgroup-parent={cgroup_parent}", "registry-pull=local", *flags]
    machine.create(
        store,
        "bench",
        "generic",
        {
            "generic_ip_address": host.ip,
            "generic_ssh_key": host.key_path,
            "generic_ssh_user": "root",
            "generic_ssh_port": 22,
            "generic_engine_port": 2376,
        },
        opts,
        [],
        log,
    )
    return "unix://" + str(host.rootfs_dir / "run/dockyard/engine.sock")


# ----- both, with teardown ------------------------------------------------------------------------------


class Peers:
    """One test host with the dockyard engine, and Debian's dockerd in its network namespace.

    start() brings both up (urls: {"dockyard": ..., "dockerd": ...}); defer() queues more teardown;
    teardown() undoes everything in reverse and returns what went wrong (it never raises).
    """

    def __init__(self, log: Log, name: str = "bench", engine_flags: tuple[str, ...] = ()):
        self.log = log
        self.name = name
        self.engine_flags = engine_flags
        self.engine_cgroup = "dockyard-bench-" + uuid.uuid4().hex[:8]
        self.host: netns_host.TestHost | None = None
        self.dockerd: Dockerd | None = None
        self.urls: dict[str, str] = {}
        self.cli_dir = ""
        self._cleanup: list[tuple[str, Callable[[], object]]] = []

    def defer(self, what: str, fn: Callable[[], object]) -> None:
        self._cleanup.append((what, fn))

    def start(self) -> Peers:
        for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            os.environ.pop(var, None)
        base = rootfs.ensure_rootfs(log=self.log)
        docker_root = rootfs.ensure_rootfs(log=self.log, variant="docker")
        netns_host.cleanup_stale()
        # teardown runs in reverse: dockerd, temp dirs, the host, then the engine's cgroups
        self.defer("engine cgroups", lambda: remove_cgroup_tree(self.engine_cgroup))
        self.host = host = netns_host.TestHost(base, name=self.name)
        self.defer("test host", host.teardown)
        host.start()
        store_dir = tempfile.mkdtemp(prefix="dockyard-bench-store-")
        self.defer("store", lambda: shutil.rmtree(store_dir, ignore_errors=True))
        self.cli_dir = tempfile.mkdtemp(prefix="dockyard-bench-cli-")
        self.defer("cli dir", lambda: shutil.rmtree(self.cli_dir, ignore_errors=True))
        self.log(f"test host {host.netns} at {host.ip}; provisioning the dockyard engine")
        self.urls["dockyard"] = provision_engine(
            host, Store(store_dir), self.engine_cgroup, lambda line: None, self.engine_flags
        )
        self.log("starting Debian's dockerd (docker-variant rootfs) in the test host's network namespace")
        self.dockerd = Dockerd(host, docker_root)
        self.defer("dockerd", self.dockerd.stop)
        self.dockerd.start()
        self.urls["dockerd"] = self.dockerd.url
        return self

    def docker(self, engine: str, *args: str, timeout: float = 120, env: dict | None = None):
        """The docker CLI against one engine ("dockyard" or "dockerd")."""
        return docker_cli(self.urls[engine], self.cli_dir, *args, timeout=timeout, env=env)

    def teardown(self) -> list[str]:
        errors = []
        while self._cleanup:
            what, fn = self._cleanup.pop()
            try:
                fn()
            except Exception as e:  # keep tearing down
                errors.append(f"{what}: {e}")
        return errors
