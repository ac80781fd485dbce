"""The container's first process, from fork to execve: cgroup, namespaces, rootfs, hostname,
loopback, terminal, then the user's command.

Runs in the child the supervisor forked (already PID 1 of the new PID namespace). It talks to the
supervisor over `sync` (SEQPACKET, close-on-exec): {"ns": "ready"} once the namespaces exist,
{"tty": true} with the pty master attached, then waits for {"go": ...}; execve closing `sync` tells
the supervisor the command runs. Any failure is sent as {"error", "code"} before exiting.
"""

import fcntl
import os
import socket
import struct
import termios

from dockyard.engine.runtime import channel, libc, mountns, process, procident, userns
from dockyard.engine.runtime.cgroups import Cgroup

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431


def loopback_up():
    """ip link set lo up, without iproute2: SIOCSIFFLAGS on a socket in the new netns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    finally:
        sock.close()


def open_pty(console_size=None):
    """A pty pair from this mount namespace's /dev/pts: (master_fd, slave_fd, slave_path)."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    num = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
    path = "/dev/pts/%d" % num
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
    if console_size and len(console_size) == 2 and console_size[0] and console_size[1]:
        set_winsize(master, console_size[0], console_size[1])
    return master, slave, path


def set_winsize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))


def become_terminal(slave):
    """setsid + controlling terminal + stdio on the pty slave."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def main(spec, sync, stdio):
    """Never returns. `stdio`: (stdin, stdout, stderr) fds for non-TTY containers, else None."""
    try:
        _run(spec, sync, stdio)
    except BaseException as exc:  # anything: the supervisor must hear about it
        process.report_error(sync, exc if isinstance(exc, Exception) else Exception(str(exc)))
    os._exit(127)


def _join_netns(pid, start):
    """--network container:<id>: join that container's network namespace while still the host's root
    (before any user namespace), pinned by PID and start time: a PID reused since is refused."""
    fd = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if start is not None and procident.start_time(pid) != start:
            raise procident.ProcessGone("the container whose network namespace this one joins has exited")
        libc.setns(fd, libc.CLONE_NEWNET)
    finally:
        os.close(fd)


def _run(spec, sync, stdio):
    # Until execve this is the host's python, already PID 1 of the container's PID namespace.
    process.make_undumpable()
    libc.prctl(libc.PR_SET_PDEATHSIG, 9)  # no orphaned container if its supervisor dies
    if stdio is not None:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in set(stdio):
            if fd > 2:
                os.close(fd)
    if spec.get("join_netns"):
        _join_netns(spec["join_netns"]["pid"], spec["join_netns"].get("start"))
    ns = spec["namespaces"]
    cg = Cgroup.from_dict(spec.get("cgroup"))
    if cg is not None and (cg.version == "2" or ns.get("cgroup")):
        # A cgroup namespace is rooted where we stand: join first. On v1 without one the
        # supervisor moves us (in parallel with the rootfs work below: cgroup v1 moves are slow).
        cg.join(0)
    flags = libc.CLONE_NEWNS
    if ns.get("uts", True):
        flags |= libc.CLONE_NEWUTS
    if ns.get("ipc", True):
        flags |= libc.CLONE_NEWIPC
    if ns.get("net", True):
        flags |= libc.CLONE_NEWNET
    if ns.get("cgroup"):
        flags |= libc.CLONE_NEWCGROUP
    opened = None
    if spec.get("userns"):
        opened = _enter_user_namespace(flags, sync, spec["rootfs"])  # returns in the container's PID 1, its root
    else:
        libc.unshare(flags)
    channel.send(sync, {"ns": "ready"})

    try:
        mountns.setup(spec["rootfs"], opened)
    finally:
        for fd in (opened or {}).values():
            os.close(fd)
    if ns.get("uts", True):
        if spec.get("hostname"):
            libc.sethostname(spec["hostname"])
        if spec.get("domainname"):
            libc.setdomainname(spec["domainname"])
    if ns.get("net", True):
        loopback_up()
    if spec.get("tty"):
        master, slave, path = open_pty(spec.get("console_size"))
        mountns.bind_console(path)
        channel.send(sync, {"tty": True}, [master])
        os.close(master)
        become_terminal(slave)
    else:
        os.setsid()

    def wait_for_go():
        # Everything up to execve is done: the supervisor may still be moving us into the
        # cgroup (or the engine wiring the network); the command starts only once both are done.
        msg = channel.recv(sync)
        if msg.get("abort"):
            os._exit(1)
        if spec.get("userns"):
            # Our parent is the supervisor now (the intermediate that forked us has been reaped).
            libc.prctl(libc.PR_SET_PDEATHSIG, 9)

    process.start(dict(spec["process"]), report_fd=sync.fileno(), before_exec=wait_for_go)


def _enter_user_namespace(flags, sync, rootfs_spec):
    """New user namespace owning every other new namespace, PID namespace included; -> open_sources.

    Runs in the supervisor's child (the PID namespace must belong to the user namespace, so the
    supervisor did not make one): unshare, let the supervisor write the id maps from outside, fork the
    container's PID 1, report its host PID and exit. PID 1 waits until the supervisor has reaped us,
    opens the root and the bind sources while its path lookups are still the host's uid 0, and then
    becomes the namespace's root (the remapped uid on the host) before any mount is made.
    """
    libc.unshare(flags | libc.CLONE_NEWUSER | libc.CLONE_NEWPID)
    channel.send(sync, {"userns": "ready"})
    msg = channel.recv(sync)
    if not msg.get("mapped"):
        os._exit(1)
    pid = os.fork()
    if pid != 0:
        channel.send(sync, {"init": pid})
        os._exit(0)
    process.make_undumpable()
    msg = channel.recv(sync)  # the supervisor reaped our parent: from here it is our parent
    if not msg.get("continue"):
        os._exit(1)
    opened = mountns.open_sources(rootfs_spec)
    userns.become_root()
    return opened
