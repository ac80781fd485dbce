"""The last steps before execve of a container or exec process: user, groups, capabilities,
no_new_privs, working directory, signals, file descriptors, PATH lookup.

Runs inside the container (after pivot_root or setns), as root, in a single-threaded child.
Failures are reported as {"error": text, "code": 126|127} on the close-on-exec `report` socket.
"""

import base64
import errno
import json
import os
import resource
import signal
import stat

from dockyard.engine.runtime import caps, libc, seccomp, userdb

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_RESET_SIGNALS = (
    "SIGPIPE",
    "SIGXFSZ",
    "SIGCHLD",
    "SIGHUP",
    "SIGINT",
    "SIGTERM",
    "SIGQUIT",
    "SIGTTIN",
    "SIGTTOU",
    "SIGTSTP",
    "SIGUSR1",
    "SIGUSR2",
    "SIGALRM",
)


class StartError(Exception):
    """The process could not be started; `code` is the exit status Docker reports (126/127)."""

    def __init__(self, message, code=127):
        super().__init__(message)
        self.code = code


def reset_signals():
    for name in _RESET_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def close_fds(keep):
    """Close every descriptor above 2 except those in `keep`."""
    keep = set(keep)
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fds = range(3, min(soft if soft > 0 else 1024, 65536))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def env_get(env, key):
    prefix = key + "="
    for item in env:
        if item.startswith(prefix):
            return item[len(prefix) :]
    return None


def lookup(argv0, env):
    """Go's exec.LookPath semantics with the container's PATH; StartError like runc's messages."""
    if "/" in argv0:
        try:
            st = os.stat(argv0)
        except OSError as exc:
            raise StartError('exec: "%s": stat %s: %s' % (argv0, argv0, _strerror(exc)), 127)
        if stat.S_ISDIR(st.st_mode):
            raise StartError('exec: "%s": is a directory' % argv0, 126)
        if not st.st_mode & 0o111:
            raise StartError('exec: "%s": permission denied' % argv0, 126)
        return argv0
    path = env_get(env, "PATH")
    if path is None:
        path = DEFAULT_PATH
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", argv0)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise StartError('exec: "%s": executable file not found in $PATH' % argv0, 127)


def _strerror(exc):
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def prepare_identity(proc):
    """Resolve and switch to the process's user; returns the environment with HOME set."""
    env = list(proc.get("env") or [])
    uid, gid, groups, home = userdb.resolve(proc.get("user") or "", proc.get("group_add") or ())
    if env_get(env, "HOME") is None:
        env.append("HOME=" + home)
    cap_mask = int(proc.get("caps", 0))
    set_rlimits(proc.get("rlimits") or ())  # while we still hold CAP_SYS_RESOURCE (raising a hard limit)
    if not proc.get("no_new_privs"):
        # Without no_new_privs, installing a filter takes CAP_SYS_ADMIN: now, while we hold it.
        install_seccomp(proc)
    if not proc.get("privileged_caps"):
        caps.drop_bounding(cap_mask)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    caps.apply(cap_mask)
    return env


def set_rlimits(rlimits):
    """HostConfig.Ulimits ([name, soft, hard]; -1 is unlimited) for the process, as runc sets them."""
    for name, soft, hard in rlimits:
        kind = getattr(resource, "RLIMIT_" + str(name).upper(), None)
        if not isinstance(kind, int):
            raise StartError("error setting rlimit type %s: unknown limit" % name, 127)
        limits = tuple(resource.RLIM_INFINITY if v < 0 else v for v in (int(soft), int(hard)))
        try:
            resource.setrlimit(kind, limits)
        except (OSError, ValueError) as exc:
            raise StartError("error setting rlimit type %d: %s" % (kind, exc), 127) from None


_PR_SET_DUMPABLE = 4


def make_undumpable():
    """PR_SET_DUMPABLE 0: /proc/<pid>/exe, fd/, mem of this process (the host's python until execve)
    need CAP_SYS_PTRACE from anyone else, also from the container's root (CVE-2019-5736). execve
    of the container's command makes the process dumpable again, as any process."""
    libc.prctl(_PR_SET_DUMPABLE, 0)


def install_seccomp(proc):
    """Load the container's seccomp program (spec "seccomp": base64 BPF compiled by the engine)."""
    program = proc.get("seccomp")
    if not program:
        return
    try:
        seccomp.install_bpf(base64.b64decode(program))
    except (OSError, ValueError) as exc:
        raise StartError("error loading seccomp filter into kernel: %s" % exc, 127) from None


def chdir(cwd, create):
    cwd = cwd or "/"
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        if not create:
            raise StartError("chdir to cwd (%r) set in config.json failed: no such file or directory" % cwd, 127)
        os.makedirs(cwd, 0o755, exist_ok=True)
        os.chdir(cwd)
    except NotADirectoryError:
        raise StartError("chdir to cwd (%r) set in config.json failed: not a directory" % cwd, 126)


def start(proc, report_fd=None, keep_fds=(), before_exec=None):
    """Become the process described by `proc` (args, env, cwd, user, caps, no_new_privs). No return."""
    args = list(proc["args"])
    if not args:
        raise StartError("no command specified", 127)
    # The working directory is created (as root) before dropping privileges, like Docker.
    chdir(proc.get("cwd"), bool(proc.get("create_cwd")))
    env = prepare_identity(proc)
    if proc.get("no_new_privs"):
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    path = lookup(args[0], env)
    if before_exec is not None:
        before_exec()
    reset_signals()
    close_fds(set(keep_fds) | ({report_fd} if report_fd is not None else set()))
    if proc.get("no_new_privs"):
        install_seccomp(proc)  # as late as possible: nothing of ours runs under the filter
    try:
        os.execve(path, args, _env_dict(env))
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        raise StartError('exec: "%s": %s' % (args[0], _strerror(exc)), code)


def _env_dict(env):
    out = {}
    for item in env:
        key, sep, value = item.partition("=")
        if key:
            out[key] = value if sep else ""
    return out


def report_error(sock, exc):
    """Best effort: tell the parent why we failed."""
    code = getattr(exc, "code", 127) if isinstance(exc, StartError) else 127
    msg = str(exc)
    if isinstance(exc, userdb.UserError):
        code = 127
    elif isinstance(exc, OSError) and not isinstance(exc, StartError):
        msg = str(exc)
    try:
        sock.send(json.dumps({"error": msg, "code": code}).encode())
    except OSError:
        pass
