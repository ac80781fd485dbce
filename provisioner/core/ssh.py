"""SSH to machines: paramiko sessions with pinned host keys (commands, sudo, file transfer, interactive
shells), pinning a host key on first contact, and waiting for SSH to come up. Targets live in ssh_target,
keys in ssh_keys, system ssh/scp argv in ssh_system."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import select
import shlex
import signal
import socket
import stat
import sys
import tarfile
import termios
import threading
import time
import tty
from dataclasses import dataclass
from typing import Any

import paramiko

from dockyard.provisioner.core.errors import (
    HostKeyChanged,
    RemoteCommandError,
    SSHAuthFailed,
    SSHError,
    SSHTimeout,
    SudoPasswordRequired,
)
from dockyard.provisioner.core.files import atomic_writer
from dockyard.provisioner.core.ssh_keys import (
    fingerprint,
    load_private_key,
    read_pinned_host_key,
    write_pinned_host_key,
)
from dockyard.provisioner.core.ssh_target import SSHTarget

# paramiko logs transport failures itself; we report them as exceptions, so keep its records off stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
debug_log = logging.getLogger(__name__)  # dockyard -D: every command with its exit status and time

CHUNK = 32768
_SUDO_PASSWORD_HINTS = ("a password is required", "a terminal is required", "no tty present", "must have a tty")
_DEFAULT = object()  # "use the process's own stdin/stdout/stderr" (resolved at call time, not import time)


@dataclass
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


# ------------------------------------------------------------------------------------------- host keys


def _host_key_changed(target: SSHTarget, expected: paramiko.PKey, got: paramiko.PKey) -> HostKeyChanged:
    return HostKeyChanged(
        f"Host key for {target.describe()} has changed! Expected {fingerprint(expected)} ({expected.get_name()}), "
        f"got {fingerprint(got)} ({got.get_name()}). Someone could be intercepting the connection, or the host was "
        f"reinstalled. If the change is legitimate, remove the pinned key file {target.host_key_path} "
        f"and connect again; it will pin the new key."
    )


class _RememberHostKey(paramiko.MissingHostKeyPolicy):
    """Runs only when nothing is pinned: keep the offered key so it can be pinned once auth has succeeded."""

    def __init__(self) -> None:
        self.seen: paramiko.PKey | None = None

    def missing_host_key(self, client, hostname, key):
        self.seen = key


def pin_host_key(target: SSHTarget) -> None:
    """Make sure the target's host key is pinned: a machine never contacted is logged into once (trust on
    first use, pinned only after the login succeeded). Before handing the target to the system ssh."""
    if target.host_key_path and read_pinned_host_key(target.host_key_path) is None:
        SSHSession(target).close()
        if read_pinned_host_key(target.host_key_path) is None:
            raise SSHError(f"could not pin the host key of {target.describe()}")


# ------------------------------------------------------------------------------------------- session


class SSHSession:
    """One authenticated SSH connection; use as a context manager."""

    def __init__(self, target: SSHTarget, connect_timeout: float = 10):
        self.target = target
        started = time.monotonic()
        pkey = load_private_key(target.key_path) if target.key_path else None
        pinned = read_pinned_host_key(target.host_key_path) if target.host_key_path else None
        client = paramiko.SSHClient()
        if pinned is not None:
            client.get_host_keys().add(target.known_hosts_name, pinned.get_name(), pinned)
        policy = _RememberHostKey()
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                pkey=pkey,
                look_for_keys=pkey is None,
                allow_agent=pkey is None,
                timeout=connect_timeout,
                banner_timeout=connect_timeout,
                auth_timeout=connect_timeout,
                channel_timeout=connect_timeout,
            )
        except paramiko.BadHostKeyException as e:
            client.close()
            raise _host_key_changed(target, e.expected_key, e.key) from None
        except paramiko.AuthenticationException as e:
            client.close()
            key = f" with key {target.key_path}" if target.key_path else ""
            raise SSHAuthFailed(f'authentication as "{target.user}" to {target.address} failed{key}: {e}') from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise SSHError(f"cannot connect to {target.address}: {_error_text(e)}") from None
        if pinned is None and target.host_key_path and policy.seen is not None:
            try:
                write_pinned_host_key(target.host_key_path, policy.seen)  # trust on first use
            except OSError as e:
                client.close()
                raise SSHError(f"cannot pin the host key in {target.host_key_path}: {e.strerror or e}") from None
        client.get_transport().set_keepalive(30)
        self._client = client
        debug_log.debug("ssh %s@%s: connected in %.3fs", target.user, target.address, time.monotonic() - started)

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- plumbing

    def _channel(self) -> paramiko.Channel:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"the SSH connection to {self.target.address} is closed")
        try:
            return transport.open_session(timeout=30)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError(f"cannot open an SSH channel to {self.target.address}: {_error_text(e)}") from None

    def _wrap(self, command: str, sudo: bool, env: dict | None = None) -> str:
        if env:
            bad = [k for k in env if not str(k).isidentifier()]
            if bad:
                raise SSHError(f"invalid environment variable name(s): {', '.join(map(str, bad))}")
            # Set variables in the command itself: sshd drops "env" requests outside AcceptEnv, sudo resets them.
            command = "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()) + "; " + command
        if self._uses_sudo(sudo):
            command = "sudo -n sh -c " + shlex.quote(command)
        return command

    def _check_sudo(self, wrapped: bool, status: int, stderr: str) -> None:
        if not wrapped or status == 0:
            return
        for line in stderr.lower().splitlines():
            if line.startswith("sudo:") and any(h in line for h in _SUDO_PASSWORD_HINTS):
                raise SudoPasswordRequired(
                    f'User "{self.target.user}" on {self.target.host} needs a password for sudo; dockyard needs '
                    f"passwordless sudo (NOPASSWD) for this user"
                )
        if status == 127 and "sudo" in stderr and "not found" in stderr:
            raise SSHError(
                f'sudo is not installed on {self.target.host}; it is needed to act as root as "{self.target.user}"'
            )

    def _exec(self, command: str, stdin=None, stdout_sink=None, timeout: float | None = None, label: str = ""):
        """Run one command. stdin: None, bytes, a binary file, or callable(write) producing the data.
        stdout goes to stdout_sink.write or is collected. Returns (exit_status, stdout_bytes, stderr_bytes)."""
        chan = self._channel()
        try:
            chan.exec_command(command)
            local_errors: list[BaseException] = []
            feeder = None
            if stdin is None:
                chan.shutdown_write()
            else:
                feeder = threading.Thread(target=_feed, args=(chan, stdin, local_errors), daemon=True)
                feeder.start()
            out, err = [], []
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise SSHTimeout(f"remote command timed out after {timeout:g}s on {self.target.address}: {label}")
                select.select([chan], [], [], wait)
                while chan.recv_ready():
                    data = chan.recv(CHUNK)
                    stdout_sink.write(data) if stdout_sink is not None else out.append(data)
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(CHUNK))
                if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
            status = chan.recv_exit_status()
            chan.close()  # unblocks a feeder still waiting to send
            if feeder is not None:
                feeder.join()
            if local_errors:
                raise SSHError(f"{label or 'remote command'}: {_error_text(local_errors[0])}")
            return (255 if status == -1 else status), b"".join(out), b"".join(err)
        finally:
            chan.close()

    def _uses_sudo(self, sudo: bool) -> bool:
        return sudo and self.target.user != "root"

    def _run(self, command: str, label: str, *, sudo=False, check=True, env=None, **kw) -> CommandResult:
        started = time.monotonic()
        try:
            status, out, err = self._exec(self._wrap(command, sudo, env), label=label, **kw)
        except Exception as e:
            debug_log.debug(
                "ssh %s: %s%s -> %s after %.3fs",
                self.target.address,
                "sudo " * sudo,
                label,
                e,
                time.monotonic() - started,
            )
            raise
        # the label, not the wrapped command: env values (proxy credentials) stay out of debug output
        debug_log.debug(
            "ssh %s: %s%s -> exit %d in %.3fs",
            self.target.address,
            "sudo " * sudo,
            label,
            status,
            time.monotonic() - started,
        )
        result = CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))
        self._check_sudo(self._uses_sudo(sudo), status, result.stderr)
        if check and status != 0:
            raise RemoteCommandError(label, status, result.stdout, result.stderr)
        return result

    # -- commands

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = None,
        env: dict | None = None,
    ) -> CommandResult:
        """Run a command (as root through `sudo -n` if asked and the user is not root); collect its output."""
        return self._run(command, command, sudo=sudo, check=check, env=env, stdin=input, timeout=timeout)

    # -- files (over plain exec with sh/cat/mktemp/tar: works through sudo and without an sftp subsystem)

    def _upload(self, source, size: int, remote_path: str, mode: int, sudo: bool) -> None:
        directory, base = posixpath.split(remote_path)
        if not base:
            raise SSHError(f"remote path {remote_path!r} names a directory, not a file")
        template = shlex.quote(posixpath.join(directory or ".", f".{base}.XXXXXX"))
        dest = shlex.quote(remote_path)
        # Written next to the destination and renamed over it only when complete (size checked, as a cut
        # stream ends like a short file), so readers never see a partial file.
        script = (
            f"t=$(mktemp {template}) || exit 1; "
            f'if cat > "$t" && [ $(wc -c < "$t") -eq {size} ] && chmod {mode & 0o7777:04o} "$t" && mv -f "$t" {dest}; '
            f'then exit 0; fi; rm -f "$t"; exit 1'
        )
        self._run(script, f"upload to {remote_path}", sudo=sudo, stdin=source)

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644, sudo: bool = False) -> None:
        data = bytes(data)
        self._upload(data, len(data), remote_path, mode, sudo)

    def put_file(self, local: str | os.PathLike[str], remote: str, mode: int | None = None, sudo: bool = False) -> None:
        try:
            f = open(local, "rb")
        except OSError as e:
            raise SSHError(f"cannot read {local}: {e.strerror}") from None
        with f:
            st = os.fstat(f.fileno())
            self._upload(f, st.st_size, remote, stat.S_IMODE(st.st_mode) if mode is None else mode, sudo)

    def get_file(self, remote: str, local: str | os.PathLike[str], sudo: bool = False) -> None:
        local = os.fspath(local)
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.ExitStack() as stack:
            try:  # a download is no record of ours: written like cp would, without fsync
                sink = stack.enter_context(atomic_writer(local, 0o666 & ~umask, durable=False))
            except OSError as e:
                raise SSHError(f"cannot write {local}: {e.strerror or e}") from None
            self._run(f"cat < {shlex.quote(remote)}", f"read {remote}", sudo=sudo, stdout_sink=sink)

    def put_tree(self, local_dir: str | os.PathLike[str], remote_dir: str, sudo: bool = False) -> None:
        """Copy the contents of local_dir into remote_dir (created if missing), like `scp -r`."""
        local_dir = os.fspath(local_dir)
        if not os.path.isdir(local_dir):
            raise SSHError(f"{local_dir} is not a directory")

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            # Files a root extractor creates belong to root, as with scp; a plain user gets its own files anyway.
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        def produce(write):
            with tarfile.open(fileobj=_WriteTo(write), mode="w|") as tar:
                tar.add(local_dir, arcname=".", filter=as_root)

        q = shlex.quote(remote_dir)
        self._run(f"mkdir -p {q} && tar -C {q} -xf -", f"unpack into {remote_dir}", sudo=sudo, stdin=produce)

    def get_tree(self, remote_dir: str, local_dir: str | os.PathLike[str], sudo: bool = False) -> None:
        """Copy the contents of remote_dir into local_dir (created if missing), like `scp -r`."""
        local_dir = os.fspath(local_dir)
        os.makedirs(local_dir, exist_ok=True)
        rfd, wfd = os.pipe()
        failure = []

        def unpack():
            with os.fdopen(rfd, "rb") as pipe:
                try:
                    with tarfile.open(fileobj=pipe, mode="r|") as tar:
                        tar.extractall(local_dir, filter="data")  # no absolute paths, no escaping links
                except Exception as e:
                    failure.append(e)
                    while pipe.read(CHUNK):  # keep draining so the sender never blocks on a full pipe
                        pass

        reader = threading.Thread(target=unpack, daemon=True)
        reader.start()
        try:
            with os.fdopen(wfd, "wb") as sink:
                q = shlex.quote(remote_dir)
                self._run(f"tar -C {q} -cf - .", f"pack {remote_dir}", sudo=sudo, stdout_sink=sink)
        finally:
            reader.join()
        if failure:
            raise SSHError(f"cannot unpack {remote_dir} from {self.target.address} into {local_dir}: {failure[0]}")

    # -- streaming and interactive use

    def exec_stream(
        self, command: str | None, stdin: Any = _DEFAULT, stdout: Any = _DEFAULT, stderr: Any = _DEFAULT
    ) -> int:
        """Run a command (or the login shell if None) without a PTY, streaming both ways; return its exit status.
        stdin=None sends no input."""
        stdin = sys.stdin.buffer if stdin is _DEFAULT else stdin
        stdout = sys.stdout.buffer if stdout is _DEFAULT else stdout
        stderr = sys.stderr.buffer if stderr is _DEFAULT else stderr
        chan = self._channel()
        try:
            chan.invoke_shell() if command is None else chan.exec_command(command)
            if stdin is None:
                chan.shutdown_write()
            else:  # a thread, so a full remote window never stops us from draining the output
                threading.Thread(target=_feed, args=(chan, stdin), daemon=True).start()
            while True:
                select.select([chan], [], [])
                _drain(chan, stdout, stderr)
                if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
            status = chan.recv_exit_status()
            return 255 if status == -1 else status
        finally:
            chan.close()

    def interactive(self, command: str | None = None) -> int:
        """A terminal session: PTY sized like the local terminal (resized on SIGWINCH), local tty in raw mode.
        Without a local tty, streams stdin/stdout without a PTY. Returns the remote exit status."""
        if not sys.stdin.isatty():
            return self.exec_stream(command)
        in_fd = sys.stdin.fileno()
        out_fd = sys.stdout.fileno()
        size_fd = out_fd if os.isatty(out_fd) else in_fd
        cols, rows = _terminal_size(size_fd)
        chan = self._channel()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        previous = previous_wakeup = None
        saved = termios.tcgetattr(in_fd)
        try:
            chan.get_pty(term=os.environ.get("TERM") or "xterm", width=cols, height=rows)
            chan.invoke_shell() if command is None else chan.exec_command(command)
            with contextlib.suppress(ValueError):  # signals can be set from the main thread only
                previous = signal.signal(signal.SIGWINCH, lambda *_: None)
                # The kernel may deliver SIGWINCH to paramiko's thread, where a Python handler would only
                # run once select() returned for another reason: the wakeup fd is written at delivery.
                previous_wakeup = signal.set_wakeup_fd(wake_w)
            tty.setraw(in_fd)
            watch = [chan, in_fd, wake_r]

            def resize_if_signalled(ready):
                if wake_r in ready:
                    os.read(wake_r, 512)
                    chan.resize_pty(*_terminal_size(size_fd))

            while True:
                ready, _, _ = select.select(watch, [], [])
                resize_if_signalled(ready)
                if in_fd in ready:
                    data = os.read(in_fd, CHUNK)
                    # A resize that came with this input goes first, so the remote sees the new size.
                    resize_if_signalled(select.select([wake_r], [], [], 0)[0])
                    if data:
                        chan.sendall(data)
                    else:
                        chan.shutdown_write()
                        watch.remove(in_fd)
                while chan.recv_ready():
                    _write_all(out_fd, chan.recv(CHUNK))
                while chan.recv_stderr_ready():
                    _write_all(out_fd, chan.recv_stderr(CHUNK))
                if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
            status = chan.recv_exit_status()
            return 255 if status == -1 else status
        finally:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
            if previous is not None and previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)
                signal.signal(signal.SIGWINCH, previous)
            os.close(wake_r)
            os.close(wake_w)
            chan.close()


class _WriteTo:
    """File-like adapter so tarfile can stream straight into a channel."""

    def __init__(self, write):
        self.write_all = write

    def write(self, data):
        self.write_all(bytes(data))
        return len(data)


class _RemoteGone(Exception):
    pass


def _feed(chan: paramiko.Channel, source, local_errors: list | None = None) -> None:
    """Send stdin data then EOF; runs in a thread so a command that talks back cannot deadlock us.
    A failure on our side (unreadable file) lands in local_errors; the remote going away early is not one."""

    def send(data):
        try:
            chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise _RemoteGone from e

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            send(source)
        elif callable(source):
            source(send)
        else:
            read = getattr(source, "read1", source.read)  # read1: pass on what arrived, don't wait for a full chunk
            while chunk := read(CHUNK):
                send(chunk)
    except _RemoteGone:
        pass  # its exit status tells the story
    except Exception as e:
        if local_errors is not None:
            local_errors.append(e)
    finally:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.shutdown_write()


def _drain(chan, stdout, stderr) -> None:
    while chan.recv_ready():
        stdout.write(chan.recv(CHUNK))
        stdout.flush()
    while chan.recv_stderr_ready():
        stderr.write(chan.recv_stderr(CHUNK))
        stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24


def _error_text(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, (TimeoutError, socket.timeout)) and not text:
        return "timed out"
    return text or type(e).__name__


# ------------------------------------------------------------------------------------------- waiting


def _wait_for_banner(target: SSHTarget, timeout: float) -> None:
    """Connect a raw socket and read until the server's identification line (cheap; no SSH handshake)."""
    with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
        buf = b""
        while len(buf) < 16384:  # RFC 4253 lets servers send other lines before the version line
            chunk = sock.recv(1024)
            if not chunk:
                raise ConnectionError("connection closed before the SSH banner")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"SSH-"):
                    if line.startswith((b"SSH-2.0-", b"SSH-1.99-")):
                        return
                    raise ConnectionError(f"unsupported SSH server version {line.strip()[:60]!r}")
        raise ConnectionError("no SSH banner in the first 16 KiB")


def wait_for_ssh(
    target: SSHTarget, timeout: float = 120, step: str = "Waiting for SSH", *, auth_attempts: int = 3
) -> SSHSession:
    """Retry (0.2 s doubling to 3 s) until SSH answers with a banner and accepts our key; return the session.
    A changed host key fails at once; a key refused auth_attempts times in a row fails without waiting out
    the timeout (during boot the key may not be installed yet, hence a few tries)."""
    if target.key_path:
        load_private_key(target.key_path)  # an unreadable key will not get better by waiting
    deadline = time.monotonic() + timeout
    delay, last, refused = 0.2, "no attempt finished", 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            _wait_for_banner(target, min(remaining, 10))
            return SSHSession(target, connect_timeout=max(min(deadline - time.monotonic(), 10), 1))
        except SSHAuthFailed as e:
            refused += 1
            last = str(e)
            if refused >= auth_attempts:
                pub = f" ({target.key_path}.pub)" if target.key_path else ""
                raise SSHAuthFailed(
                    f"{step}: {e} (refused {refused} times). Check that the public key{pub} is in "
                    f"~{target.user}/.ssh/authorized_keys on {target.host}."
                ) from None
        except HostKeyChanged:
            raise
        except (SSHError, OSError) as e:
            last = _error_text(e)
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 2, 3.0)
    raise SSHTimeout(f"{step} to {target.address} as {target.user} timed out after {timeout:g}s: last error: {last}")
