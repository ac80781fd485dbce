"""Throw-away SSH test hosts: a private network namespace and overlay rootfs running sshd or systemd."""

from __future__ import annotations

import base64
import ctypes
import fcntl
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

if TYPE_CHECKING:
    from tests.hosts.lab import Lab

# Everything this module creates is named with this prefix; cleanup_stale() relies on it.
PREFIX = "dy-"
SUBNET = ipaddress.ip_network("10.231.0.0/16")
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_INDEX_RE = re.compile(r"^dy-(?:v)?(\d+)(?:-|$)")
# The dockyard engine's default data-root; bound to a real-disk directory (overlay on overlay is refused).
ENGINE_DATA_ROOT = "/var/lib/dockyard"
# dockerd's data-root, bound the same way on hosts whose rootfs has Docker (the "docker" rootfs variant).
DOCKER_DATA_ROOT = "/var/lib/docker"


def state_root() -> Path:
    return Path(os.environ.get("DOCKYARD_TEST_RUNDIR") or "/tmp/dockyard-hosts")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _die_with_parent() -> None:
    # If pytest itself is killed, its hosts die too instead of lingering (netns/dirs: cleanup_stale).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _alive(pid: int) -> bool:
    """True while pid runs; zombies (waiting for init to reap them) count as dead."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _owner_token() -> str:
    return f"{os.getpid()} {_start_time(os.getpid())}"


def _owner_alive(token: str) -> bool:
    try:
        pid, start = token.split()
        return _start_time(int(pid)) == start
    except ValueError:
        return False


def _ed25519_pair() -> tuple[bytes, str]:
    """(private key in OpenSSH PEM format, 'ssh-ed25519 AAAA...' public line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public


def _mountpoints_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt == str(path) or mnt.startswith(prefix):
            found.append(mnt)
    return found


def _remove_tree(path: Path) -> None:
    # Never recurse into a tree that still has mounts in it (an rbound /dev would be emptied).
    if not path.exists():
        return
    mounts = _mountpoints_under(path)
    if mounts:
        raise RuntimeError(f"refusing to delete {path}: still mounted: {mounts}")
    shutil.rmtree(path)


class _Lock:
    """Exclusive lock shared by all pytest processes for index allocation and stale cleanup."""

    def __enter__(self):
        state_root().mkdir(parents=True, exist_ok=True)
        self._f = open(state_root() / ".lock", "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._f.close()


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _link_names() -> list[str]:
    out = _run("ip", "-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _used_indices() -> set[int]:
    used = set()
    names = [p.name for p in state_root().glob(PREFIX + "*")] + _netns_names() + _link_names()
    for name in names:
        m = _INDEX_RE.match(name)
        if m:
            used.add(int(m.group(1)))
    # Refuse any /24 of 10.231/16 that the machine already routes somewhere else.
    for line in _run("ip", "-o", "-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0]
        if dest in ("default", "local", "broadcast", "unreachable", "blackhole", "prohibit"):
            dest = line.split()[1] if dest != "default" else "0.0.0.0/0"
        try:
            net = ipaddress.ip_network(dest, strict=False)
        except ValueError:
            continue
        if net.prefixlen >= 8 and net.overlaps(SUBNET):
            dev = line.split(" dev ")[1].split()[0] if " dev " in line else ""
            if not dev.startswith(PREFIX):
                if net.prefixlen <= 16:
                    raise RuntimeError(f"route {line!r} covers {SUBNET}; not creating test hosts")
                used.add(int(str(net.network_address).split(".")[2]))
    return used


def _pids_in_netns(netns: str) -> list[int]:
    proc = _run("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def _kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _nspid(pid: int | str) -> list[str]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return []
    return next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])


def _ns_init_pid(netns: str) -> int | None:
    """PID (as seen here) of the process that is PID 1 of a child pid namespace inside `netns`."""
    depth = len(_nspid("self")) + 1  # exactly one level down: not a container the host runs itself
    for pid in _pids_in_netns(netns):
        nspid = _nspid(pid)
        if len(nspid) == depth and nspid[-1] == "1":
            return pid
    return None


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry))
    return pids


def cleanup_stale() -> list[str]:
    """Remove hosts left behind by crashed runs: state dirs, processes, netns, veths, nspawn dirs.

    Only `dy-*` objects whose owning pytest process is gone are touched, so hosts of a
    concurrently running pytest survive. Returns what was removed.
    """
    removed = []
    root = state_root()
    with _Lock():
        live, stale_dirs = set(), []
        for d in root.glob(PREFIX + "*"):
            m = _INDEX_RE.match(d.name)
            owner = d / "owner"
            if m and owner.exists() and _owner_alive(owner.read_text()):
                live.add(int(m.group(1)))
            else:
                stale_dirs.append(d)

        def stale(name: str) -> bool:
            m = _INDEX_RE.match(name)
            return bool(m) and int(m.group(1)) not in live

        for d in stale_dirs:
            _kill_pids(_processes_mentioning(str(d) + "/"))
        for ns in _netns_names():
            if ns.startswith(PREFIX) and stale(ns):
                _kill_pids(_pids_in_netns(ns))
                _run("ip", "netns", "del", ns, check=False)
                removed.append("netns " + ns)
        for link in _link_names():
            if link.startswith(PREFIX) and stale(link):
                _run("ip", "link", "del", link, check=False)
                removed.append("link " + link)
        for sub in ("propagate", "unix-export"):
            for d in Path("/run/systemd/nspawn", sub).glob(PREFIX + "*"):
                if stale(d.name):
                    shutil.rmtree(d, ignore_errors=True)
        time.sleep(0.1 if stale_dirs else 0)  # let killed mount namespaces go away
        for d in stale_dirs:
            _remove_tree(d)
            removed.append("dir " + str(d))
    return removed


class TestHost:
    """One isolated host with its own netns, /30 link, overlay root and SSH server.

    Plain flavour: sshd is PID 1 of a private pid/mount/uts namespace, chrooted into the overlay.
    systemd=True: the same rootfs booted by systemd-nspawn, so systemd is PID 1.
    """

    __test__ = False  # not a pytest test class despite the name
    port = 22
    user = "root"

    def __init__(
        self, rootfs: str | os.PathLike, name: str | None = None, systemd: bool = False, lab: Lab | None = None
    ):
        if name is not None and not _NAME_RE.match(name):
            raise ValueError(f"bad host name {name!r}: use [a-z][a-z0-9-]*, at most 31 chars")
        self.lower = Path(rootfs)
        self.name = name
        self.systemd = systemd
        self.lab = lab  # plugged into a lab switch (tests/hosts/lab.py) instead of its own /30 to the root ns
        self.index: int | None = None
        self.ip: str | None = None
        self.root_ip: str | None = None
        self.netns: str | None = None
        self.veth: str | None = None
        self.dir: Path | None = None
        self.key_path: Path | None = None
        self.public_key: str | None = None  # the client key's public line
        self.host_public_key: str | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log: BinaryIO | None = None
        self._init_pid: int | None = None

    # ----- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "TestHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.teardown()

    def start(self, timeout: float = 60) -> "TestHost":
        """Create network, files and processes; return once sshd greets (systemd: boot finished)."""
        if self.netns:
            raise RuntimeError(f"host {self.name} already started")
        if not (self.lower / "usr/sbin/sshd").exists():
            raise FileNotFoundError(f"{self.lower} is not a test rootfs (no usr/sbin/sshd)")
        try:
            self._create_network()
            self._write_files()
            self._launch()
            self.wait_ssh(timeout)
            if self.systemd:
                self._wait_systemd(timeout)
        except BaseException:
            self.teardown()
            raise
        return self

    def _create_network(self) -> None:
        if self.lab is not None:
            self._create_lab_network(self.lab)
            return
        with _Lock():
            used = _used_indices()
            self.index = next((i for i in range(1, 255) if i not in used), None)
            if self.index is None:
                raise RuntimeError("no free 10.231.N.0/30 left (254 hosts in use?)")
            self.name = self.name or f"h{self.index}"
            self.netns = f"{PREFIX}{self.index}-{self.name}"
            self.veth = f"{PREFIX}v{self.index}"
            self.dir = state_root() / self.netns
            self.dir.mkdir(mode=0o700)
            (self.dir / "owner").write_text(_owner_token())
            _run("ip", "netns", "add", self.netns)
            _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            self.root_ip, self.ip = f"10.231.{self.index}.1", f"10.231.{self.index}.2"
            _run("ip", "addr", "add", self.root_ip + "/30", "dev", self.veth)
        ipv6 = Path(f"/proc/sys/net/ipv6/conf/{self.veth}/disable_ipv6")
        if ipv6.exists():  # no link-local chatter; the tests use IPv4 only
            ipv6.write_text("1")
        _run("ip", "link", "set", self.veth, "up")
        _run("ip", "-n", self.netns, "addr", "add", self.ip + "/30", "dev", "eth0")
        _run("ip", "-n", self.netns, "link", "set", "eth0", "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def _create_lab_network(self, lab: Lab) -> None:
        if not self.name or lab.index is None:
            raise ValueError("a lab host needs a name and a started lab")
        with _Lock():
            self.index = lab.index
            self.netns = f"{PREFIX}{self.index}-{self.name}"
            self.dir = state_root() / self.netns
            self.dir.mkdir(mode=0o700)
            (self.dir / "owner").write_text(_owner_token())
            _run("ip", "netns", "add", self.netns)
        self.ip, self.root_ip = lab.plug(self.netns, self.name)

    def _passwd(self) -> dict[str, tuple[int, int, str]]:
        users = {}
        for line in (self.lower / "etc/passwd").read_text().splitlines():
            f = line.split(":")
            users[f[0]] = (int(f[2]), int(f[3]), f[5])
        return users

    def _put(self, rel: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Write a file into the overlay's upper dir; parent dirs copy the lower dir's metadata."""
        upper = self.dir / "upper"
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            sub = Path(*parts[:i])
            if not (upper / sub).exists():
                st = os.lstat(self.lower / sub)
                os.mkdir(upper / sub, st.st_mode & 0o7777)
                os.chown(upper / sub, st.st_uid, st.st_gid)
                os.chmod(upper / sub, st.st_mode & 0o7777)
        path = upper / rel
        path.write_bytes(data)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    @property
    def has_docker(self) -> bool:
        """The rootfs has Debian's dockerd (the "docker" variant of tests/hosts/rootfs.py)."""
        return (self.lower / "usr/sbin/dockerd").exists()

    def _write_files(self) -> None:
        for sub in ("upper", "work", "merged", "engine-data"):
            (self.dir / sub).mkdir()
        if self.has_docker:
            (self.dir / "docker-data").mkdir()
        private, self.public_key = _ed25519_pair()
        self.key_path = self.dir / "id_ed25519"
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        (self.dir / "id_ed25519.pub").write_text(self.public_key + "\n")
        host_private, self.host_public_key = _ed25519_pair()
        self._put("etc/ssh/ssh_host_ed25519_key", host_private, 0o600)
        self._put("etc/ssh/ssh_host_ed25519_key.pub", (self.host_public_key + "\n").encode(), 0o644)
        self._put("etc/hostname", f"{self.name}\n".encode(), 0o644)
        hosts = f"127.0.0.1\tlocalhost\n{self.ip}\t{self.name}\n::1\tlocalhost ip6-localhost\n"
        self._put("etc/hosts", hosts.encode(), 0o644)
        users = self._passwd()
        for user in ("root", "tester", "pwuser"):
            uid, gid, home = users[user]
            self._put(home.lstrip("/") + "/.ssh/authorized_keys", (self.public_key + "\n").encode(), 0o600, uid, gid)

    def _launch(self) -> None:
        merged, q = self.dir / "merged", shlex.quote
        overlay = f"lowerdir={self.lower},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}"
        lines = ["set -e", f"R={q(str(merged))}", f'mount -t overlay overlay -o {q(overlay)} "$R"']
        if self.systemd:
            # nspawn builds the rest of the container itself; our mount namespace only holds
            # the overlay, so it disappears with nspawn.
            lines.append(
                shlex.join(
                    [
                        "exec",
                        *(
                            # dockerd enables forwarding in the host's own netns; nspawn keeps /proc/sys/net
                            # read-only unless told (the root namespace's sysctls are never touched)
                            ["env", "SYSTEMD_NSPAWN_API_VFS_WRITABLE=network"] if self.has_docker else []
                        ),
                        "systemd-nspawn",
                        "-D",
                        str(merged),
                        "--boot",
                        f"--network-namespace-path=/run/netns/{self.netns}",
                        "--capability=CAP_NET_ADMIN",
                        "--register=no",
                        "--keep-unit",
                        "--console=passive",
                        "-M",
                        self.netns,
                        f"--hostname={self.name}",
                        "--link-journal=no",
                        "--resolv-conf=off",
                        "--timezone=off",
                        f"--bind={self.dir / 'engine-data'}:{ENGINE_DATA_ROOT}",
                    ]
                    + ([f"--bind={self.dir / 'docker-data'}:{DOCKER_DATA_ROOT}"] if self.has_docker else [])
                )
            )
            argv = ["unshare", "--mount", "--propagation", "private"]
        else:
            lines += [
                'mount -t proc proc "$R/proc"',
                'mount -t sysfs sysfs "$R/sys"',
                # a fresh sysfs hides the cgroup mounts, which container engines need (§7)
                'mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"',
                'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"',
                'mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"',
                # the engine's overlay mounts need a data-root that can be an overlay upper dir:
                # the host's root is an overlay itself, so bind a directory of the real disk there
                f'mkdir -p "$R{ENGINE_DATA_ROOT}"',
                f'mount --bind {q(str(self.dir / "engine-data"))} "$R{ENGINE_DATA_ROOT}"',
                *(
                    [
                        f'mkdir -p "$R{DOCKER_DATA_ROOT}"',
                        f'mount --bind {q(str(self.dir / "docker-data"))} "$R{DOCKER_DATA_ROOT}"',
                    ]
                    if self.has_docker
                    else []
                ),
                'mount --rbind /dev "$R/dev"',
                'mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"',
                'mount --bind "$R/dev/pts/ptmx" "$R/dev/ptmx"',
                'mkdir -m 0755 "$R/run/sshd"',
                f"hostname {q(self.name)}",
                *(
                    # A chroot leaves this mount namespace's root at the machine's own /: runc exec's setns
                    # lands there, not in the container (docker exec then ran the machine's programs and read
                    # its /etc/resolv.conf). pivot_root makes the overlay the namespace's root, as on a real host.
                    ['cd "$R"', "pivot_root . .", "umount -l .", "exec /usr/sbin/sshd -D -e"]
                    if self.has_docker
                    else ['exec chroot "$R" /usr/sbin/sshd -D -e']
                ),
            ]
            # nsenter execs (no fork), so the PID we keep is unshare's; --kill-child takes
            # PID 1 (sshd) and with it the whole pid namespace down when unshare dies.
            argv = [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
            ]
        script = self.dir / "run.sh"
        script.write_text("\n".join(lines) + "\n")
        self.log_path = self.dir / "host.log"
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            argv + ["/bin/sh", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        (self.dir / "pid").write_text(str(self._proc.pid))

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except (OSError, AttributeError):
            return ""

    def wait_ssh(self, timeout: float = 30) -> str:
        """Wait until the SSH-2.0 banner arrives on ip:22; return the banner line."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"host {self.name} exited with {self._proc.returncode}:\n" + self._log_tail())
            try:
                with socket.create_connection((self.ip, self.port), timeout=1) as s:
                    s.settimeout(2)
                    banner = s.recv(256)
                if banner.startswith(b"SSH-2.0-"):
                    return banner.split(b"\r\n")[0].decode()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no SSH banner from {self.name} ({self.ip}) after {timeout} s:\n" + self._log_tail()
                )
            time.sleep(0.05)

    def _wait_systemd(self, timeout: float) -> None:
        # "starting" until boot is over; any final state (running/degraded) counts as booted.
        proc = self.exec("systemctl is-system-running --wait", timeout=timeout)
        state = proc.stdout.strip()
        if state not in ("running", "degraded"):
            raise RuntimeError(f"systemd in {self.name} is {state!r}: {proc.stderr}\n{self._log_tail()}")

    # ----- access ----------------------------------------------------------------------
    @property
    def init_pid(self) -> int:
        """PID (in this namespace) of the host's PID 1: sshd, or systemd for nspawn hosts."""
        if self._init_pid and _start_time(self._init_pid) is not None:
            return self._init_pid
        deadline = time.monotonic() + 10
        while True:
            pid = _ns_init_pid(self.netns) if self.netns else None
            if pid:
                self._init_pid = pid
                return pid
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name} has no PID 1 process\n" + self._log_tail())
            time.sleep(0.05)

    @property
    def rootfs_dir(self) -> Path:
        """The host's merged root as seen from here (through /proc, valid while it runs)."""
        return Path(f"/proc/{self.init_pid}/root")

    @property
    def known_hosts_line(self) -> str:
        return f"{self.ip} {self.host_public_key}"

    def exec(
        self, cmd: str | list[str], *, check: bool = False, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run cmd as root inside all of the host's namespaces and root (not over SSH)."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", f"--target={self.init_pid}", "--all", "--root", "--wdns=/", "--"] + argv
        env = {"PATH": INNER_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input, check=check, env=env)

    def served_host_key(self, timeout: float = 5) -> str:
        """The 'type base64' host key that the SSH server on ip:22 presents right now."""
        transport = paramiko.Transport(socket.create_connection((self.ip, self.port), timeout=timeout))
        try:
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
            return f"{key.get_name()} {key.get_base64()}"
        finally:
            transport.close()

    def connect(self, user: str = "root", timeout: float = 10) -> paramiko.SSHClient:
        """A paramiko client logged in as `user`, pinned to this host's current host key."""
        client = paramiko.SSHClient()
        kind, b64 = self.host_public_key.split()[:2]
        client.get_host_keys().add(self.ip, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.ip,
            self.port,
            username=user,
            key_filename=str(self.key_path),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        return client

    def regenerate_host_key(self, timeout: float = 30) -> str:
        """Give the host a new SSH host key and restart sshd; return the new public line."""
        private, public = _ed25519_pair()
        key = self.rootfs_dir / "etc/ssh/ssh_host_ed25519_key"
        key.write_bytes(private)
        os.chmod(key, 0o600)
        key.with_suffix(".pub").write_text(public + "\n")
        self.host_public_key = public
        if self.systemd:
            self.exec("systemctl restart ssh.service", check=True, timeout=timeout)
        else:
            os.kill(self.init_pid, signal.SIGHUP)  # sshd re-execs itself in place and reloads keys
        # The old listener may answer for a moment, and its re-exec'd per-connection children read the key
        # files anew, so the new key can be served before the listener itself restarts (a short window with
        # no listener). Done = the new key served without a failure for a whole second.
        want = " ".join(public.split()[:2])
        deadline = time.monotonic() + timeout
        stable_since = None
        while True:
            try:
                ok = self.served_host_key() == want
            except (OSError, paramiko.SSHException, EOFError):
                ok = False
            now = time.monotonic()
            stable_since = (stable_since or now) if ok else None
            if stable_since is not None and now - stable_since >= 1.0:
                return public
            if now > deadline:
                raise TimeoutError(f"{self.name} does not serve the new host key steadily\n" + self._log_tail())
            time.sleep(0.1)

    # ----- shutdown --------------------------------------------------------------------
    def stop(self, timeout: float = 30) -> None:
        """Stop every process of the host (idempotent). nspawn hosts get an orderly shutdown."""
        proc, self._init_pid = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        init = _ns_init_pid(self.netns)
        if self.systemd:
            proc.terminate()  # nspawn asks systemd inside to power off
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            # `unshare --fork` ignores SIGTERM; SIGKILL it and --kill-child ends the pid namespace.
            proc.kill()
            proc.wait(10)
        deadline = time.monotonic() + 10
        while init and _alive(init) and time.monotonic() < deadline:
            time.sleep(0.02)  # PID 1 of the host is killed asynchronously

    def teardown(self) -> None:
        """Remove processes, netns, veth and files; safe to call repeatedly and after failures."""
        errors = []
        try:
            self.stop()
        except Exception as e:  # keep going: the network and files must still go
            errors.append(e)
        if self.netns:
            _kill_pids(_pids_in_netns(self.netns))
            _run("ip", "netns", "del", self.netns, check=False)
            for sub in ("propagate", "unix-export"):
                shutil.rmtree(Path("/run/systemd/nspawn", sub, self.netns), ignore_errors=True)
        if self.veth and self.veth in _link_names():
            _run("ip", "link", "del", self.veth, check=False)
        if self._log:
            self._log.close()
            self._log = None
        if self.dir:
            try:
                _remove_tree(self.dir)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


# The pieces tests/hosts/lab.py shares with this module (no underscore names cross modules).
run = _run
lock = _Lock
used_indices = _used_indices
owner_token = _owner_token
kill_pids = _kill_pids
pids_in_netns = _pids_in_netns
link_names = _link_names
