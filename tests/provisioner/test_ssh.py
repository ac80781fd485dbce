"""dockyard.provisioner.core.ssh against a real OpenSSH server on 127.0.0.1.

Each sshd runs in a private mount namespace where /etc/passwd, /etc/group and /etc/sudoers are replaced by
bind mounts that add the users "tester" (NOPASSWD sudo) and "pwuser" (sudo with password), so the machine's
own users are never touched; /run and /var/log are tmpfs there so logins leave no trace either.
Needs root and the Debian packages listed in .ci/ssh-deps.txt (openssh-server, sudo).
"""

import base64
import ctypes
import fcntl
import hashlib
import io
import logging
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import paramiko
import pytest

from dockyard.provisioner.core.errors import (
    HostKeyChanged,
    RemoteCommandError,
    SSHAuthFailed,
    SSHError,
    SSHTimeout,
    SudoPasswordRequired,
)
from dockyard.provisioner.core.ssh import SSHSession, pin_host_key, wait_for_ssh
from dockyard.provisioner.core.ssh_keys import fingerprint, generate_keypair, load_private_key
from dockyard.provisioner.core.ssh_system import system_scp_argv, system_ssh_argv
from dockyard.provisioner.core.ssh_target import SSHTarget

SSHD = "/usr/sbin/sshd"
REPO = str(Path(__file__).resolve().parents[2])
TESTER_UID = 43210
PWUSER_UID = 43211

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the test sshd needs root (mount namespace, user switching)"),
    pytest.mark.skipif(not os.path.exists(SSHD), reason="needs openssh-server, see .ci/ssh-deps.txt"),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _die_with_parent():
    # If pytest itself is killed, the kernel kills the sshd listener too (kept across the exec of unshare/sh/sshd).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Sshd:
    """A throwaway sshd on 127.0.0.1 with its own host key, authorized_keys and test users."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="dockyard-sshd-"))
        self.dir.chmod(0o755)  # the test users must reach authorized_keys and their homes
        self.host_key = self.dir / "host_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text("")
        self.authorized_keys.chmod(0o644)
        self.log = self.dir / "sshd.log"
        self.port = _free_port()
        self.proc = None
        self.new_host_key()
        self.homes = {}
        for user, uid in (("tester", TESTER_UID), ("pwuser", PWUSER_UID)):
            home = self.dir / f"home-{user}"
            home.mkdir()
            os.chown(home, uid, uid)
            self.homes[user] = home
        self.root_only = self.dir / "root-only"  # writable by root alone
        self.root_only.mkdir(mode=0o755)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        for user, uid in (("tester", TESTER_UID), ("pwuser", PWUSER_UID)):
            passwd += f"{user}:*:{uid}:{uid}::{self.homes[user]}:/bin/sh\n"
            group += f"{user}:x:{uid}:\n"
        (self.dir / "passwd").write_text(passwd)
        (self.dir / "group").write_text(group)
        sudoers = self.dir / "sudoers"
        sudoers.write_text("root ALL=(ALL:ALL) ALL\ntester ALL=(ALL:ALL) NOPASSWD: ALL\npwuser ALL=(ALL:ALL) ALL\n")
        sudoers.chmod(0o440)

    def new_host_key(self):
        for p in (self.host_key, Path(f"{self.host_key}.pub")):
            p.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)

    @property
    def host_public_key(self):
        kind, b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))

    def authorize(self, public_line):
        with open(self.authorized_keys, "a") as f:
            f.write(public_line + "\n")

    def start(self):
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {self.dir}/sshd.pid\n"
            f"AuthorizedKeysFile {self.authorized_keys}\nPermitRootLogin prohibit-password\nUsePAM no\n"
            "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
            "PrintLastLog no\nPrintMotd no\nLogLevel VERBOSE\nMaxStartups 50\n"
            "Subsystem sftp internal-sftp\n"
        )
        d = self.dir
        setup = (
            f"mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group && "
            f"mount --bind {d}/sudoers /etc/sudoers && mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && "
            f"mount -t tmpfs tmpfs /var/log && exec {SSHD} -D -e -f {config}"
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", setup],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"sshd did not answer on port {self.port}:\n{self.log.read_text()}")

    def stop(self):
        if self.proc is None:
            return
        # Per-connection sshd processes call setsid(), so find them through their parent chain.
        for pid in reversed(_descendants(self.proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def restart_with_new_host_key(self):
        self.stop()
        self.new_host_key()
        self.start()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("client") / "id_ed25519"
    line = generate_keypair(path, "dockyard-test")
    return str(path), line


@pytest.fixture(scope="module")
def sshd(client_key):
    server = Sshd()
    server.authorize(client_key[1])
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_sshd(client_key):
    """An sshd for tests that change its host key."""
    server = Sshd()
    server.authorize(client_key[1])
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def make_target(sshd, client_key, tmp_path, user="root", pin=True, machine="h1"):
    return SSHTarget(
        host="127.0.0.1",
        port=sshd.port,
        user=user,
        key_path=client_key[0],
        host_key_path=str(tmp_path / "host_key") if pin else None,
        machine=machine,
    )


@pytest.fixture
def session(sshd, client_key, tmp_path):
    with SSHSession(make_target(sshd, client_key, tmp_path)) as s:
        yield s


# ------------------------------------------------------------------------------------------------ keys


def test_generate_keypair_writes_openssh_ed25519_with_owner_only_permissions(tmp_path):
    path = tmp_path / "id_ed25519"
    line = generate_keypair(path, "machine-h1")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (Path(f"{path}.pub").stat().st_mode & 0o777) == 0o644
    assert Path(f"{path}.pub").read_text() == line + "\n"
    kind, b64, comment = line.split()
    assert (kind, comment) == ("ssh-ed25519", "machine-h1")
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # OpenSSH itself derives the same public key from the private file.
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == [kind, b64]
    key = load_private_key(path)
    assert key.get_name() == "ssh-ed25519" and key.get_base64() == b64
    with pytest.raises(SSHError, match="already exists"):
        generate_keypair(path)
    assert generate_keypair(path, "again", overwrite=True).split()[1] != b64


@pytest.mark.parametrize(
    "kind,name", [("rsa", "ssh-rsa"), ("ecdsa", "ecdsa-sha2-nistp256"), ("ed25519", "ssh-ed25519")]
)
def test_load_private_key_types(tmp_path, kind, name):
    path = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    assert load_private_key(path).get_name() == name


def test_load_private_key_errors_are_clear(tmp_path):
    with pytest.raises(SSHError, match=r"cannot read SSH key .*missing: No such file"):
        load_private_key(tmp_path / "missing")
    garbage = tmp_path / "garbage"
    garbage.write_text("hello\n")
    with pytest.raises(SSHError, match="is not a usable SSH private key"):
        load_private_key(garbage)
    encrypted = tmp_path / "encrypted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(encrypted)], check=True)
    with pytest.raises(SSHError, match="passphrase"):
        load_private_key(encrypted)


# -------------------------------------------------------------------------------------------- commands


def test_run_exit_status_and_output(session):
    ok = session.run("echo out; echo err >&2")
    assert (ok.exit_status, ok.stdout, ok.stderr) == (0, "out\n", "err\n")
    failed = session.run("echo bad >&2; exit 3", check=False)
    assert (failed.exit_status, failed.stderr) == (3, "bad\n")
    with pytest.raises(RemoteCommandError) as info:
        session.run("echo line1 >&2; echo 'the reason' >&2; exit 4")
    assert info.value.exit_status == 4
    assert str(info.value).endswith("line1\nthe reason")


def test_run_stdin_input_and_env(session):
    data = os.urandom(300_000)  # bigger than a channel window, so feeding and reading must overlap
    result = session.run("sha256sum; cat >/dev/null", input=data)
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    echoed = session.run("cat", input=b"line one\nline two\n")
    assert echoed.stdout == "line one\nline two\n"
    assert session.run("cat").stdout == ""  # no input means EOF at once, not a hang
    value = "a b'c $HOME"
    assert session.run('printf %s "$FOO"', env={"FOO": value}).stdout == value


def test_run_timeout(session):
    with pytest.raises(SSHTimeout, match="timed out after 0.5s"):
        session.run("sleep 60", timeout=0.5)
    assert session.run("echo still usable").stdout == "still usable\n"


def test_exec_stream_passes_data_and_exit_code(session, tmp_path):
    out, err = io.BytesIO(), io.BytesIO()
    code = session.exec_stream("cat; echo oops >&2; exit 5", stdin=io.BytesIO(b"payload"), stdout=out, stderr=err)
    assert (code, out.getvalue(), err.getvalue()) == (5, b"payload", b"oops\n")
    # A large file echoed back: input is fed while output is drained.
    data = os.urandom(5_000_000)
    source = tmp_path / "in"
    source.write_bytes(data)
    out = io.BytesIO()
    with open(source, "rb") as f:
        assert session.exec_stream("cat", stdin=f, stdout=out, stderr=io.BytesIO()) == 0
    assert out.getvalue() == data
    # No command: the login shell reads the commands from stdin.
    out = io.BytesIO()
    assert (
        session.exec_stream(None, stdin=io.BytesIO(b"echo from-shell\nexit 9\n"), stdout=out, stderr=io.BytesIO()) == 9
    )
    assert out.getvalue() == b"from-shell\n"


# ----------------------------------------------------------------------------------------------- files


def test_put_bytes_and_get_file_round_trip(session, sshd, tmp_path):
    remote = f"{sshd.dir}/data/file.bin"
    session.run(f"mkdir -p {sshd.dir}/data")
    data = os.urandom(200_000)
    session.put_bytes(data, remote, mode=0o640)
    assert session.run(f"stat -c '%a %U' {remote}").stdout.strip() == "640 root"
    session.put_bytes(b"replaced", remote)  # replacing an existing file
    assert session.run(f"stat -c %a {remote}").stdout.strip() == "644"
    assert session.run(f"ls -A {sshd.dir}/data").stdout == "file.bin\n"  # no temp files left behind
    local = tmp_path / "copy"
    session.get_file(remote, local)
    assert local.read_bytes() == b"replaced"
    session.put_bytes(data, remote)
    session.get_file(remote, local)
    assert local.read_bytes() == data
    session.put_bytes(b"", remote)
    session.get_file(remote, local)
    assert local.read_bytes() == b""


def test_transfer_errors(session, sshd, tmp_path):
    with pytest.raises(RemoteCommandError, match="upload to /nonexistent-dir/x"):
        session.put_bytes(b"x", "/nonexistent-dir/x")
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    with pytest.raises(RemoteCommandError, match="read /nonexistent-file"):
        session.get_file("/nonexistent-file", local_dir / "never")
    assert os.listdir(local_dir) == []  # no local temp file left either


def test_cut_upload_never_replaces_the_file(session, sshd):
    remote = f"{sshd.dir}/keep.txt"
    session.put_bytes(b"original\n", remote)

    def fails_midway(send):
        send(b"partial")
        raise OSError("local disk vanished")

    with pytest.raises(SSHError, match="upload to .*keep.txt: local disk vanished"):
        session._upload(fails_midway, 100, remote, 0o644, False)
    with pytest.raises(RemoteCommandError, match="upload to"):
        session._upload(b"short", 100, remote, 0o644, False)  # the stream ended early: same as a cut
    assert session.run(f"cat {remote}").stdout == "original\n"
    assert ".keep.txt." not in session.run(f"ls -A {sshd.dir}").stdout


def test_put_file_keeps_the_local_mode(session, sshd, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o750)
    remote = f"{sshd.dir}/run.sh"
    session.put_file(script, remote)
    assert session.run(f"stat -c %a {remote}").stdout.strip() == "750"
    assert session.run(remote).stdout == "ran\n"
    session.put_file(script, remote, mode=0o600)
    assert session.run(f"stat -c %a {remote}").stdout.strip() == "600"


def test_put_tree_and_get_tree_round_trip(session, sshd, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "blob").write_bytes(os.urandom(150_000))
    (src / "sub" / "deeper" / "tool").write_text("#!/bin/sh\n")
    (src / "sub" / "deeper" / "tool").chmod(0o755)
    (src / "link").symlink_to("sub/blob")
    remote = f"{sshd.dir}/tree/a b"  # a space, to exercise quoting
    session.put_tree(src, remote)
    listing = session.run(f"cd '{remote}' && find . | sort").stdout.split()
    assert listing == [
        ".",
        "./empty",
        "./link",
        "./sub",
        "./sub/blob",
        "./sub/deeper",
        "./sub/deeper/tool",
        "./top.txt",
    ]
    assert session.run(f"stat -c %U '{remote}/top.txt'").stdout.strip() == "root"
    dst = tmp_path / "back"
    session.get_tree(remote, dst)
    for rel in ("top.txt", "empty", "sub/blob", "sub/deeper/tool"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert os.readlink(dst / "link") == "sub/blob"
    assert (dst / "sub/deeper/tool").stat().st_mode & 0o100
    with pytest.raises(RemoteCommandError, match="pack /nonexistent"):
        session.get_tree("/nonexistent", tmp_path / "none")


# ------------------------------------------------------------------------------------------- host keys


def test_first_contact_pins_the_host_key(sshd, client_key, tmp_path):
    target = make_target(sshd, client_key, tmp_path)
    pin = Path(target.host_key_path)
    assert not pin.exists()
    with SSHSession(target) as s:
        assert s.run("echo hi").stdout == "hi\n"
    assert pin.stat().st_mode & 0o777 == 0o600
    kind, b64 = pin.read_text().split()
    server = sshd.host_public_key
    assert (kind, b64) == (server.get_name(), server.get_base64())
    with SSHSession(target) as s:  # the pinned key is accepted afterwards
        assert s.run("true").exit_status == 0


def test_no_pinning_without_host_key_path(sshd, client_key, tmp_path):
    with SSHSession(make_target(sshd, client_key, tmp_path, pin=False)) as s:
        assert s.run("echo ok").stdout == "ok\n"
    assert os.listdir(tmp_path) == []


def test_changed_host_key_is_refused_before_login(own_sshd, client_key, tmp_path):
    target = make_target(own_sshd, client_key, tmp_path, machine="h1")
    SSHSession(target).close()
    old = own_sshd.host_public_key
    pinned_before = Path(target.host_key_path).read_bytes()
    own_sshd.restart_with_new_host_key()
    new = own_sshd.host_public_key
    log_offset = own_sshd.log.stat().st_size
    with pytest.raises(HostKeyChanged) as info:
        SSHSession(target)
    message = str(info.value)
    assert message.startswith(f'Host key for machine "h1" (127.0.0.1:{own_sshd.port}) has changed! ')
    assert f"Expected {fingerprint(old)}" in message and f"got {fingerprint(new)}" in message
    assert f"remove the pinned key file {target.host_key_path}" in message
    # The fingerprint format is OpenSSH's own.
    keygen = subprocess.run(
        ["ssh-keygen", "-lf", f"{own_sshd.host_key}.pub"], capture_output=True, text=True, check=True
    )
    assert keygen.stdout.split()[1] == fingerprint(new)
    assert Path(target.host_key_path).read_bytes() == pinned_before  # never silently re-pinned
    with pytest.raises(HostKeyChanged):
        wait_for_ssh(target, timeout=60)  # not retried either
    # The system ssh refuses too, and the command never runs.
    marker = own_sshd.dir / "ran"
    proc = subprocess.run(
        system_ssh_argv(target, [f"touch {marker}"], tty=False),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    assert not marker.exists()
    assert "Accepted publickey" not in own_sshd.log.read_text()[log_offset:]
    # Removing the pin, as the message says, trusts the new key.
    os.unlink(target.host_key_path)
    with SSHSession(target) as s:
        assert s.run("echo ok").stdout == "ok\n"
    assert Path(target.host_key_path).read_text().split()[1] == new.get_base64()


# --------------------------------------------------------------------------------------------- waiting


def test_wait_for_ssh_timeout_names_step_address_user_and_last_error(tmp_path, client_key):
    port = _free_port()  # nothing listens there any more
    target = SSHTarget(host="127.0.0.1", port=port, user="root", key_path=client_key[0])
    with pytest.raises(SSHTimeout) as info:
        wait_for_ssh(target, timeout=1, step="Waiting for SSH on h1")
    assert str(info.value) == (
        f"Waiting for SSH on h1 to 127.0.0.1:{port} as root timed out after 1s: "
        f"last error: [Errno 111] Connection refused"
    )


def test_wait_for_ssh_returns_a_session(sshd, client_key, tmp_path):
    with wait_for_ssh(make_target(sshd, client_key, tmp_path), timeout=60) as s:
        assert s.run("echo up").stdout == "up\n"


def test_wrong_key_fails_fast_with_a_clear_error(sshd, tmp_path):
    other = tmp_path / "other_key"
    generate_keypair(other)
    target = SSHTarget(host="127.0.0.1", port=sshd.port, user="root", key_path=str(other))
    # Only the fail-fast path can end this with SSHAuthFailed: spinning until the timeout gives SSHTimeout.
    with pytest.raises(SSHAuthFailed) as info:
        wait_for_ssh(target, timeout=120, step="Waiting for SSH")
    message = str(info.value)
    assert message.startswith(
        f'Waiting for SSH: authentication as "root" to 127.0.0.1:{sshd.port} failed with key {other}'
    )
    assert "refused 3 times" in message and f"{other}.pub" in message and "authorized_keys" in message
    assert not isinstance(info.value, SSHTimeout)


def test_unreadable_key_fails_at_once(sshd, tmp_path):
    target = SSHTarget(host="127.0.0.1", port=sshd.port, key_path=str(tmp_path / "nope"))
    with pytest.raises(SSHError, match="cannot read SSH key"):
        wait_for_ssh(target, timeout=120)


# ------------------------------------------------------------------------------------------ system ssh


def test_system_ssh_runs_with_pinned_key_and_passes_the_exit_code(sshd, client_key, tmp_path):
    target = make_target(sshd, client_key, tmp_path)
    # Building an argv never logs in: an unpinned machine is pinned first, by one login.
    with pytest.raises(SSHError, match=r'the host key of machine "h1" \(127.0.0.1:\d+\) is not pinned yet'):
        system_ssh_argv(target, ["true"], tty=False)
    assert not Path(target.host_key_path).exists()
    pin_host_key(target)
    assert Path(target.host_key_path).exists()
    argv = system_ssh_argv(target, ["echo hello; exit 7"], tty=False)
    assert argv[0] == "ssh" and argv[-2:] == ["root@127.0.0.1", "echo hello; exit 7"]
    for option in (
        "StrictHostKeyChecking=yes",
        "IdentitiesOnly=yes",
        "HostKeyAlias=dockyard.h1",
        f"UserKnownHostsFile={target.host_key_path}.known_hosts",
    ):
        assert option in argv
    assert argv[argv.index("-i") + 1] == client_key[0] and argv[argv.index("-p") + 1] == str(sshd.port)
    assert "-T" in argv
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "hello\n", "")
    # Options after the host reach ssh, and "--" separates the command, as with docker-machine ssh.
    proc = subprocess.run(
        system_ssh_argv(target, ["-C", "--", "echo", "x"], tty=None),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, "x\n")


def test_system_ssh_refuses_a_key_others_can_read(sshd, client_key, tmp_path):
    loose = tmp_path / "loose_key"
    shutil.copy(client_key[0], loose)
    loose.chmod(0o644)
    target = SSHTarget(host="127.0.0.1", port=sshd.port, key_path=str(loose))
    with pytest.raises(SSHError, match=r"permissions 0o644 for SSH key .*loose_key are too open"):
        system_ssh_argv(target, ["true"], tty=False)
    assert "-t" in system_ssh_argv(SSHTarget(host="127.0.0.1", port=sshd.port, key_path=client_key[0]), [], tty=True)


def test_system_scp_both_directions(sshd, client_key, tmp_path, session):
    target = make_target(sshd, client_key, tmp_path)
    local = tmp_path / "up.txt"
    local.write_text("via scp\n")
    remote = f"{sshd.dir}/scp-up.txt"
    up = subprocess.run(
        system_scp_argv(target, [str(local)], remote, to_remote=True, quiet=True),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr
    assert session.run(f"cat {remote}").stdout == "via scp\n"
    down = subprocess.run(
        system_scp_argv(target, [remote], str(tmp_path / "down.txt"), to_remote=False),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.txt").read_text() == "via scp\n"


# ----------------------------------------------------------------------------------------- interactive


def _read_until(fd, pattern, seen=b"", limit=60):
    deadline = time.monotonic() + limit
    while not re.search(pattern, seen):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"no {pattern!r} in terminal output: {seen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            pytest.fail(f"terminal closed before {pattern!r}: {seen!r}")
        seen += chunk
    return seen


def test_interactive_uses_a_pty_sized_like_the_local_terminal(sshd, client_key, tmp_path):
    target = make_target(sshd, client_key, tmp_path)
    SSHSession(target).close()  # pin first, so the child only connects
    command = (
        'printf "TERM=%s\\n" "$TERM"; [ -t 0 ] && echo HAS-TTY; echo "SIZE $(stty size)"; read line; '
        'echo "SIZE2 $(stty size)"; exit 3'
    )
    child = (
        f"import sys, termios; sys.path.insert(0, {REPO!r})\n"
        "from dockyard.provisioner.core.ssh import SSHSession, SSHTarget\n"
        f"t = SSHTarget(host='127.0.0.1', port={sshd.port}, key_path={client_key[0]!r}, "
        f"host_key_path={target.host_key_path!r})\n"
        f"with SSHSession(t) as s:\n    code = s.interactive({command!r})\n"
        "echo = bool(termios.tcgetattr(0)[3] & termios.ECHO)\n"
        "print('LOCAL-EXIT', code, 'ECHO', echo, flush=True)\n"
    )
    pid, master = pty.fork()
    if pid == 0:  # child: give the terminal a known size before anything reads it
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.execve(sys.executable, [sys.executable, "-c", child], {**os.environ, "TERM": "vt220"})
        finally:
            os._exit(127)
    try:
        seen = _read_until(master, rb"SIZE \d+ \d+")
        assert b"TERM=vt220" in seen and b"HAS-TTY" in seen and b"SIZE 30 100" in seen
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))  # SIGWINCH to the child
        os.write(master, b"go\r")
        seen = _read_until(master, rb"LOCAL-EXIT .*\n", seen)
        assert b"SIZE2 50 132" in seen
        assert b"LOCAL-EXIT 3 ECHO True" in seen  # remote exit status, and the local tty left cooked
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(master)


# ------------------------------------------------------------------------------------------------ sudo


def test_sudo_for_a_non_root_user(sshd, client_key, tmp_path):
    with SSHSession(make_target(sshd, client_key, tmp_path, user="tester")) as s:
        assert s.run("id -u").stdout.strip() == str(TESTER_UID)
        assert s.run("id -u", sudo=True).stdout.strip() == "0"
        assert s.run('printf %s "$X"', sudo=True, env={"X": "kept 'through' sudo"}).stdout == "kept 'through' sudo"
        assert s.run("cat", sudo=True, input=b"stdin via sudo").stdout == "stdin via sudo"
        target_file = f"{sshd.root_only}/conf"
        with pytest.raises(RemoteCommandError):
            s.put_bytes(b"no", target_file)
        s.put_bytes(b"yes\n", target_file, mode=0o600, sudo=True)
        assert s.run(f"stat -c '%a %U' {target_file}", sudo=True).stdout.strip() == "600 root"
        local = tmp_path / "conf"
        with pytest.raises(RemoteCommandError):
            s.get_file(target_file, local)  # 0600 root: unreadable without sudo
        s.get_file(target_file, local, sudo=True)
        assert local.read_bytes() == b"yes\n"
        failed = s.run("exit 6", sudo=True, check=False)
        assert failed.exit_status == 6


def test_root_runs_without_sudo(session):
    assert session.run('echo "${SUDO_USER:-none}"', sudo=True).stdout == "none\n"


def test_sudo_needing_a_password_is_reported(sshd, client_key, tmp_path):
    with SSHSession(make_target(sshd, client_key, tmp_path, user="pwuser")) as s:
        assert s.run("id -un").stdout.strip() == "pwuser"
        with pytest.raises(SudoPasswordRequired) as info:
            s.run("true", sudo=True, check=False)
        assert str(info.value) == (
            'User "pwuser" on 127.0.0.1 needs a password for sudo; '
            "dockyard needs passwordless sudo (NOPASSWD) for this user"
        )
        with pytest.raises(SudoPasswordRequired):
            s.put_bytes(b"x", f"{sshd.root_only}/x", sudo=True)


def test_debug_log_names_each_command_its_exit_status_and_time_but_not_env_values(session, caplog):
    caplog.set_level(logging.DEBUG, logger="dockyard")
    session.run("exit 3", check=False, env={"HTTP_PROXY": "http://user:s3cret@proxy:3128"})
    records = [r.getMessage() for r in caplog.records if r.name == "dockyard.provisioner.core.ssh"]
    assert re.fullmatch(r"ssh \S+: exit 3 -> exit 3 in \d+\.\d{3}s", records[-1]), records
    assert not any("s3cret" in r for r in records)
