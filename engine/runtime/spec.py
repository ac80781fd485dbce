"""The runtime spec: everything a supervisor (or an exec helper) needs to run a container's
process, derived from the stored container record at start time. Plain JSON-able dicts."""

import base64
import logging
import os

from dockyard.engine.errors import InvalidParameter
from dockyard.engine.runtime import caps as capmod
from dockyard.engine.runtime import cgroups, mountns, seccomp
from dockyard.engine.runtime.create import merge_env, no_new_privs, security_options

log = logging.getLogger("dockyard.engine")

SECCOMP_UNAVAILABLE_AT_START = "cannot apply the container's seccomp profile: %s"
# The default profile compiled per capability set, once per engine process (compiling it costs ~10 ms a
# start; the profile and libseccomp do not change while the engine runs). Plain dict: a race compiles twice.
_DEFAULT_PROGRAMS: dict = {}
DEFAULT_PROGRAMS_MAX = 64

# The HostConfig fields the supervisor applies to the container's cgroup (and `docker update` may change).
RESOURCE_KEYS = (
    "Memory",
    "MemorySwap",
    "MemoryReservation",
    "NanoCpus",
    "CpuShares",
    "CpuPeriod",
    "CpuQuota",
    "PidsLimit",
    "CpusetCpus",
    "CpusetMems",
)


def process_env(container):
    cfg = container.config
    # --link on the default bridge: ALIAS_* variables first, so the container's own win (as moby)
    env = list((getattr(container, "record", None) or {}).get("LinkEnv") or []) + list(cfg.get("Env") or [])
    keys = {e.split("=", 1)[0] for e in env}
    if "HOSTNAME" not in keys and cfg.get("Hostname"):
        env.append("HOSTNAME=" + cfg["Hostname"])
    if cfg.get("Tty") and "TERM" not in keys:
        env.append("TERM=xterm")
    return env


def cap_mask(host_config, privileged=None):
    privileged = host_config.get("Privileged") if privileged is None else privileged
    names = capmod.effective_set(host_config.get("CapAdd"), host_config.get("CapDrop"), bool(privileged))
    return capmod.mask(names)


def seccomp_filter(host_config):
    """The container's seccomp program (base64 of the BPF) for process.start, or None: unconfined.

    As dockerd: privileged containers and seccomp=unconfined run without a filter, everything else
    gets Docker's default profile evaluated for the container's capabilities. Unlike dockerd (which
    ignores it), a profile given explicitly to a privileged container is applied. Exec processes get
    the container's filter, as runc does. Without libseccomp the default profile is skipped (/info
    warns); an explicit profile is refused."""
    choice = security_options(host_config.get("SecurityOpt"))
    profile = choice["seccomp"]
    if profile == "unconfined" or (host_config.get("Privileged") and not choice["seccomp_explicit"]):
        return None
    reason = seccomp.unavailable_reason()
    if reason is not None:
        if choice["seccomp_explicit"]:
            raise InvalidParameter(SECCOMP_UNAVAILABLE_AT_START % reason)
        log.warning("seccomp: %s; the container runs without the default profile", reason)
        return None
    names = capmod.effective_set(
        host_config.get("CapAdd"), host_config.get("CapDrop"), bool(host_config.get("Privileged"))
    )
    if profile == "default":
        program = _default_program(names)
        return base64.b64encode(program).decode("ascii") if program else None
    try:
        program = seccomp.compile_bpf(profile, names)
    except seccomp.ProfileError as exc:
        raise InvalidParameter(str(exc)) from None
    return base64.b64encode(program).decode("ascii") if program else None


def _default_program(names):
    """compile_bpf of Docker's default profile for these capabilities, compiled once per set."""
    key = frozenset(names)
    if key in _DEFAULT_PROGRAMS:
        return _DEFAULT_PROGRAMS[key]
    try:
        program = seccomp.compile_bpf(seccomp.default_profile(), key)
    except seccomp.ProfileError as exc:
        raise InvalidParameter(str(exc)) from None
    if len(_DEFAULT_PROGRAMS) >= DEFAULT_PROGRAMS_MAX:
        _DEFAULT_PROGRAMS.clear()
    _DEFAULT_PROGRAMS[key] = program
    return program


def rlimits(host_config):
    """HostConfig.Ulimits as [name, soft, hard] for process.set_rlimits (execs get them too, as runc's)."""
    return [[u["Name"], u.get("Soft") or 0, u.get("Hard") or 0] for u in host_config.get("Ulimits") or []]


def process_spec(container):
    cfg, hc = container.config, container.host_config
    return {
        "seccomp": seccomp_filter(hc),
        "args": [container.record["Path"]] + list(container.record.get("Args") or []),
        "env": process_env(container),
        "cwd": cfg.get("WorkingDir") or "/",
        "create_cwd": True,
        "user": cfg.get("User") or "",
        "group_add": list(hc.get("GroupAdd") or []),
        "caps": cap_mask(hc),
        "privileged_caps": bool(hc.get("Privileged")),
        "no_new_privs": (not hc.get("Privileged")) and no_new_privs(hc),
        "rlimits": rlimits(hc),
    }


def mount_list(container):
    """Bind/tmpfs mounts for mountns.setup: user mounts plus /etc/{hostname,hosts,resolv.conf}."""
    out, dests = [], set()
    for point in container.mounts:
        dest = point["Destination"]
        dests.add(dest)
        if point["Type"] == "tmpfs":
            out.append({"type": "tmpfs", "destination": dest, "options": point.get("Mode") or ""})
        else:
            out.append(
                {
                    "type": "bind",
                    "source": point["Source"],
                    "destination": dest,
                    "readonly": not point.get("RW", True),
                    "propagation": point.get("Propagation") or "rprivate",
                }
            )
    for name, dest in (("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")):
        path = os.path.join(container.dir, name)
        if dest not in dests and os.path.exists(path):
            out.append(
                {"type": "bind", "source": path, "destination": dest, "readonly": False, "propagation": "rprivate"}
            )
    return out


def namespaces(container, layout, network_mode):
    hc = container.host_config
    cgroupns = hc.get("CgroupnsMode") or ("private" if layout.version == "2" else "host")
    return {
        "pid": hc.get("PidMode") != "host",
        "net": network_mode not in ("host", "container"),  # container: joins another's (join_netns)
        "uts": hc.get("UTSMode") != "host",
        "ipc": hc.get("IpcMode") != "host",
        "cgroup": cgroupns == "private",
    }


def supervisor_spec(
    container,
    *,
    rootfs_path,
    cgroup,
    layout,
    network_mode,
    sock,
    run_id,
    network_hook,
    attach_opts,
    idmap=None,
    join_netns=None,
):
    cfg, hc = container.config, container.host_config
    privileged = bool(hc.get("Privileged"))
    masked = hc.get("MaskedPaths")
    ro_paths = hc.get("ReadonlyPaths")
    init = {
        "namespaces": namespaces(container, layout, network_mode),
        "cgroup": cgroup.to_dict() if cgroup else None,
        "hostname": cfg.get("Hostname") or "",
        "domainname": cfg.get("Domainname") or "",
        "tty": bool(cfg.get("Tty")),
        "console_size": list(hc.get("ConsoleSize") or [0, 0]),
        "rootfs": {
            "root": rootfs_path,
            "privileged": privileged,
            "mounts": mount_list(container),
            "masked_paths": list(mountns.MASKED_PATHS if masked is None else masked),
            "readonly_paths": list(mountns.READONLY_PATHS if ro_paths is None else ro_paths),
            "readonly_rootfs": bool(hc.get("ReadonlyRootfs")),
            "shm_size": int(hc.get("ShmSize") or 0),
            "tty": bool(cfg.get("Tty")),
            "cgroup2": layout.version == "2",
        },
        "process": process_spec(container),
        # --userns-remap: the id maps of the container's user namespace (IdMap.to_dict), or None
        "userns": idmap.to_dict() if idmap is not None else None,
        # --network container:<id>: {"pid", "start"} of the init whose network namespace to join
        "join_netns": join_netns,
    }
    return {
        "id": container.id,
        "dir": container.dir,
        "run": run_id,
        "sock": sock,
        "log": container.log_path,
        "log_driver": (hc.get("LogConfig") or {}).get("Type") or "json-file",
        "log_opts": dict((hc.get("LogConfig") or {}).get("Config") or {}),
        "exit_file": container.exit_file,
        "tty": bool(cfg.get("Tty")),
        "open_stdin": bool(cfg.get("OpenStdin")),
        "stdin_once": bool(cfg.get("StdinOnce")),
        "cgroup": cgroup.to_dict() if cgroup else None,
        "resources": {k: hc.get(k) for k in RESOURCE_KEYS},
        "privileged": privileged,
        "network_hook": bool(network_hook),
        "attach": list(attach_opts),
        "init": init,
    }


def exec_spec(container, exec_cfg, cgroup_dict, layout):
    """What execproc needs: the target pid, namespaces to join, cgroup and the process."""
    cfg, hc = container.config, container.host_config
    privileged = bool(exec_cfg.get("Privileged")) or bool(hc.get("Privileged"))
    env = process_env(container)
    if exec_cfg.get("Env"):
        env = merge_env(env, exec_cfg["Env"])
    return {
        "pid": container.state.get("Pid"),
        "pid_start": container.state.get("PidStartTime"),
        "namespaces": ["cgroup", "ipc", "uts", "net", "pid", "mnt", "user"],
        "cgroup": cgroup_dict,
        "tty": bool(exec_cfg.get("Tty")),
        "console_size": list(exec_cfg.get("ConsoleSize") or [0, 0]),
        "process": {
            "args": list(exec_cfg.get("Cmd") or []),
            "env": env,
            "cwd": exec_cfg.get("WorkingDir") or cfg.get("WorkingDir") or "/",
            "create_cwd": False,
            "user": exec_cfg.get("User") or cfg.get("User") or "",
            "group_add": list(hc.get("GroupAdd") or []),
            "caps": cap_mask(hc, privileged),
            "privileged_caps": privileged,
            "no_new_privs": (not privileged) and no_new_privs(hc),
            "seccomp": seccomp_filter(hc),
            "rlimits": rlimits(hc),
        },
    }


def container_cgroup(container, parent, layout=None):
    return cgroups.Cgroup.for_container(parent, container.id, layout)
