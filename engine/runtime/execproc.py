"""`docker exec`: a helper forked from the fork server joins a running container's cgroup and
namespaces (setns), then forks the exec'd process into them and reports its pid and exit code.

Messages on the control channel (to the engine): {"tty": true} with the pty master (opened in
the container's own /dev/pts), {"event": "started", "pid"}, {"event": "failed", "error", "code"},
{"event": "exited", "code"}. The exit code is sent before the helper exits, so the engine can
record it before it closes the client's stream.
"""

import json
import os
import socket

from dockyard.engine.runtime import channel, containerinit, libc, process, procident, userns
from dockyard.engine.runtime.cgroups import Cgroup
from dockyard.engine.runtime.supervisor import exit_status

# Join order: the cgroup namespace after the cgroup itself; mnt after the others (it changes root and
# cwd, and the /proc/<pid>/ns files were opened before); the user namespace (--userns-remap) last,
# while we are still the host's root for the others.
NS_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt", "user")
NS_FLAGS = {
    "cgroup": libc.CLONE_NEWCGROUP,
    "ipc": libc.CLONE_NEWIPC,
    "uts": libc.CLONE_NEWUTS,
    "net": libc.CLONE_NEWNET,
    "pid": libc.CLONE_NEWPID,
    "mnt": libc.CLONE_NEWNS,
    "user": libc.CLONE_NEWUSER,
}


def main(spec, fds):
    ctl = socket.socket(fileno=fds[0])
    stdio = fds[1:4]
    try:
        return _run(spec, ctl, stdio)
    except procident.ProcessGone as exc:
        try:
            channel.send(
                ctl, {"event": "failed", "error": "container is not running: %s" % exc, "code": 126, "gone": True}
            )
        except OSError:
            pass
        return 1
    except Exception as exc:
        code = getattr(exc, "code", 126)
        try:
            channel.send(ctl, {"event": "failed", "error": str(exc), "code": code})
        except OSError:
            pass
        return 1


def _run(spec, ctl, stdio):
    libc.set_process_name("dockyard-exec")
    # This process and the child it forks into the container's PID namespace are the host's python
    # until the child's execve: no one in the container may open them through /proc/<pid>/exe.
    process.make_undumpable()
    # The init is addressed by PID plus recorded start time (and a pidfd): once it has exited,
    # its PID may belong to a host process, whose namespaces we must never join.
    pinned = procident.Pinned(int(spec["pid"]), spec.get("pid_start")).open()
    try:
        return _run_pinned(spec, ctl, stdio, pinned)
    finally:
        pinned.close()


def _run_pinned(spec, ctl, stdio, pinned):
    target = pinned.pid
    wanted = [n for n in NS_ORDER if n in spec.get("namespaces", NS_ORDER)]
    own = {}
    for name in wanted:
        own[name] = os.stat("/proc/self/ns/" + name).st_ino
    ns_fds = []
    for name in wanted:
        path = "/proc/%d/ns/%s" % (target, name)
        if os.stat(path).st_ino == own[name]:
            continue  # shared with the host (e.g. --network host): nothing to join
        ns_fds.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
    # setns(mnt) lands on the namespace's root mount, which is not the container's root when
    # the engine itself runs chrooted: take the init's root directly (/proc/<pid>/root).
    root_fd = os.open("/proc/%d/root" % target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pinned.check()  # every /proc/<pid> file above was opened while the recorded init ran
    cg = Cgroup.from_dict(spec.get("cgroup"))
    if cg is not None:
        cg.join(0)
    for name, fd in ns_fds:
        libc.setns(fd, NS_FLAGS[name])
        os.close(fd)
    if any(name == "user" for name, _ in ns_fds):
        userns.become_root()  # the host's uid 0 has no id in there; the exec'd user is set later
    os.fchdir(root_fd)
    os.chroot(".")
    os.close(root_fd)
    os.chdir("/")
    slave = None
    if spec.get("tty"):
        master, slave, _path = containerinit.open_pty(spec.get("console_size"))
        channel.send(ctl, {"tty": True}, [master])
        os.close(master)
    sync_h, sync_e = channel.pair()
    pid = os.fork()
    if pid == 0:
        try:
            ctl.close()
            sync_h.close()
            if slave is not None:
                containerinit.become_terminal(slave)
            else:
                for target_fd, fd in enumerate(stdio):
                    os.dup2(fd, target_fd)
                for fd in set(stdio):
                    if fd > 2:
                        os.close(fd)
                os.setsid()
            process.start(spec["process"], report_fd=sync_e.fileno())
        except BaseException as exc:
            process.report_error(sync_e, exc if isinstance(exc, Exception) else Exception(str(exc)))
        os._exit(127)
    sync_e.close()
    if slave is not None:
        os.close(slave)
    for fd in set(stdio):
        os.close(fd)
    failure = None
    try:
        data = sync_h.recv(65536)
        if data:
            failure = json.loads(data.decode("utf-8", "replace"))
    except OSError:
        pass
    sync_h.close()
    if failure:
        os.waitpid(pid, 0)
        channel.send(
            ctl,
            {"event": "failed", "error": failure.get("error", "exec failed"), "code": int(failure.get("code", 126))},
        )
        return 1
    channel.send(ctl, {"event": "started", "pid": pid})
    _, status = os.waitpid(pid, 0)
    channel.send(ctl, {"event": "exited", "code": exit_status(status)})
    return 0
