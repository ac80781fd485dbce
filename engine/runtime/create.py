"""`POST /containers/create`: validate the request and derive the stored container record
(image config merged as dockerd does, HostConfig normalised, mount points resolved)."""

import os
import re

from dockyard.engine.errors import InvalidParameter
from dockyard.engine.runtime import caps as capmod
from dockyard.engine.runtime import logs, seccomp
from dockyard.engine.runtime.signals import SignalError, parse_signal

_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")
_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")

# HostConfig as moby echoes it back when the client left fields out (docker-py sends few).
HOSTCONFIG_DEFAULTS = {
    "Binds": None,
    "ContainerIDFile": "",
    "LogConfig": {"Type": "json-file", "Config": {}},
    "NetworkMode": "bridge",
    "PortBindings": {},
    "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
    "AutoRemove": False,
    "VolumeDriver": "",
    "VolumesFrom": None,
    "ConsoleSize": [0, 0],
    "CapAdd": None,
    "CapDrop": None,
    "CgroupnsMode": "",
    "Dns": [],
    "DnsOptions": [],
    "DnsSearch": [],
    "ExtraHosts": None,
    "GroupAdd": None,
    "IpcMode": "private",
    "Cgroup": "",
    "Links": None,
    "OomScoreAdj": 0,
    "PidMode": "",
    "Privileged": False,
    "PublishAllPorts": False,
    "ReadonlyRootfs": False,
    "SecurityOpt": None,
    "UTSMode": "",
    "UsernsMode": "",
    "ShmSize": 67108864,
    "Runtime": "runc",
    "Isolation": "",
    "CpuShares": 0,
    "Memory": 0,
    "NanoCpus": 0,
    "CgroupParent": "",
    "BlkioWeight": 0,
    "BlkioWeightDevice": [],
    "BlkioDeviceReadBps": [],
    "BlkioDeviceWriteBps": [],
    "BlkioDeviceReadIOps": [],
    "BlkioDeviceWriteIOps": [],
    "CpuPeriod": 0,
    "CpuQuota": 0,
    "CpuRealtimePeriod": 0,
    "CpuRealtimeRuntime": 0,
    "CpusetCpus": "",
    "CpusetMems": "",
    "Devices": [],
    "DeviceCgroupRules": None,
    "DeviceRequests": None,
    "MemoryReservation": 0,
    "MemorySwap": 0,
    "MemorySwappiness": None,
    "OomKillDisable": None,
    "PidsLimit": None,
    "Ulimits": [],
    "CpuCount": 0,
    "CpuPercent": 0,
    "IOMaximumIOps": 0,
    "IOMaximumBandwidth": 0,
    "Mounts": None,
    "Tmpfs": None,
    "MaskedPaths": None,
    "ReadonlyPaths": None,
}
CONFIG_KEYS = (
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
)


def validate_name(name):
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidParameter("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed" % name)
    return name.lstrip("/")


def merge_env(image_env, user_env):
    """Image Env overridden by the user's, keyed by variable name (order: image first)."""
    out, index = [], {}
    for item in list(image_env or []) + list(user_env or []):
        key = item.split("=", 1)[0]
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def merge_config(body, image_config):
    """The effective Config: dockerd's merge of the create body with the image's config."""
    cfg = {k: body.get(k) for k in CONFIG_KEYS if k in body}
    img = image_config or {}
    user_entry = body.get("Entrypoint")
    if isinstance(user_entry, str):
        user_entry = [user_entry]
    user_cmd = body.get("Cmd")
    if isinstance(user_cmd, str):
        user_cmd = [user_cmd]
    if not user_entry:
        if not user_cmd:
            user_cmd = img.get("Cmd")
        if user_entry is None:
            user_entry = img.get("Entrypoint")
    if user_entry == [""]:
        user_entry = None  # `--entrypoint ""` clears the image's entrypoint
    cfg["Entrypoint"] = user_entry or None
    cfg["Cmd"] = user_cmd or None
    cfg["Env"] = merge_env(img.get("Env"), body.get("Env"))
    if not any(e.startswith("PATH=") for e in cfg["Env"]):
        cfg["Env"].insert(0, "PATH=" + DEFAULT_PATH)
    for key in ("WorkingDir", "User", "StopSignal", "Domainname"):
        if not cfg.get(key) and img.get(key):
            cfg[key] = img[key]
    labels = dict(img.get("Labels") or {})
    labels.update(body.get("Labels") or {})
    cfg["Labels"] = labels
    exposed = dict(img.get("ExposedPorts") or {})
    exposed.update(body.get("ExposedPorts") or {})
    if exposed:
        cfg["ExposedPorts"] = exposed
    volumes = dict(img.get("Volumes") or {})
    volumes.update(body.get("Volumes") or {})
    cfg["Volumes"] = volumes or None
    for key, default in (
        ("Hostname", ""),
        ("Domainname", ""),
        ("User", ""),
        ("AttachStdin", False),
        ("AttachStdout", False),
        ("AttachStderr", False),
        ("Tty", False),
        ("OpenStdin", False),
        ("StdinOnce", False),
        ("WorkingDir", ""),
        ("OnBuild", None),
    ):
        if cfg.get(key) is None:
            cfg[key] = default
    cfg["Image"] = body.get("Image") or ""
    image_hc = img.get("Healthcheck")
    if isinstance(image_hc, dict):  # moby: what the request leaves empty comes from the image's HEALTHCHECK
        user_hc = dict(cfg.get("Healthcheck") or {})
        for key, value in image_hc.items():
            if not user_hc.get(key):
                user_hc[key] = value
        cfg["Healthcheck"] = user_hc
    if cfg.get("StopSignal"):
        try:
            parse_signal(cfg["StopSignal"])
        except SignalError as exc:
            raise InvalidParameter(str(exc)) from None
    if cfg.get("WorkingDir") and not cfg["WorkingDir"].startswith("/"):
        raise InvalidParameter(
            "the working directory '%s' is invalid, it needs to be an absolute path" % cfg["WorkingDir"]
        )
    return cfg


def command_of(cfg):
    """(path, args) from Entrypoint + Cmd; InvalidParameter when there is none."""
    argv = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    if not argv:
        raise InvalidParameter("No command specified")
    return argv[0], argv[1:]


def normalize_host_config(hc, default_log_driver=logs.JSON_FILE):
    """HostConfig with dockerd's defaults; LogConfig.Type "" becomes the engine's default driver
    (--engine-opt log-driver=, json-file unless set) and its options are checked for that driver."""
    hc = dict(hc or {})
    out = dict(HOSTCONFIG_DEFAULTS)
    out.update({k: v for k, v in hc.items()})
    log_cfg = dict(out.get("LogConfig") or {})
    log_cfg["Type"] = logs.check_log_driver(log_cfg.get("Type") or default_log_driver)
    log_cfg["Config"] = log_cfg.get("Config") or {}
    logs.parse_driver_opts(log_cfg["Type"], log_cfg["Config"])
    out["LogConfig"] = log_cfg
    if not out.get("NetworkMode") or out["NetworkMode"] == "default":
        out["NetworkMode"] = "bridge"
    rp = dict(out.get("RestartPolicy") or {})
    name = rp.get("Name") or "no"
    if name not in RESTART_POLICIES:
        raise InvalidParameter(
            "invalid restart policy: unknown policy '%s'; use one of 'no', 'always', "
            "'on-failure', or 'unless-stopped'" % name
        )
    count = int(rp.get("MaximumRetryCount") or 0)
    if count < 0:
        raise InvalidParameter("invalid restart policy: maximum retry count can't be negative")
    if count and name != "on-failure":
        raise InvalidParameter("invalid restart policy: maximum retry count can only be used with 'on-failure'")
    out["RestartPolicy"] = {"Name": name, "MaximumRetryCount": count}
    if out.get("AutoRemove") and name not in ("no", ""):
        raise InvalidParameter("conflicting options: cannot specify both --restart and --rm")
    if not out.get("IpcMode"):
        out["IpcMode"] = "private"
    if not out.get("ShmSize"):
        out["ShmSize"] = 67108864
    for key in ("Memory", "MemorySwap", "NanoCpus", "CpuShares", "CpuQuota", "CpuPeriod", "MemoryReservation"):
        try:
            out[key] = int(out.get(key) or 0)
        except (TypeError, ValueError):
            raise InvalidParameter("invalid value for %s" % key) from None
    if out["Memory"] and out["Memory"] < 6 * 1024 * 1024:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if out["MemorySwap"] > 0 and out["Memory"] and out["MemorySwap"] < out["Memory"]:
        raise InvalidParameter("Minimum memoryswap limit should be larger than memory limit, see usage")
    if out["NanoCpus"] and (out["CpuQuota"] or out["CpuPeriod"]):
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if out["NanoCpus"]:
        ncpu = os.cpu_count() or 1
        if out["NanoCpus"] < 10000000 or out["NanoCpus"] > ncpu * 1000000000:
            raise InvalidParameter(
                "Range of CPUs is from 0.01 to %d.00, as there are only %d CPUs available" % (ncpu, ncpu)
            )
    pids = out.get("PidsLimit")
    if pids is not None:
        try:
            out["PidsLimit"] = int(pids)
        except (TypeError, ValueError):
            raise InvalidParameter("invalid PidsLimit") from None
        if out["PidsLimit"] <= 0:
            out["PidsLimit"] = None if out["PidsLimit"] == 0 else out["PidsLimit"]
    try:
        capmod.effective_set(out.get("CapAdd"), out.get("CapDrop"), False)
    except capmod.CapabilityError as exc:
        raise InvalidParameter(str(exc)) from None
    for mode_key in ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        value = out.get(mode_key) or ""
        allowed = {
            "PidMode": ("", "host"),
            "IpcMode": ("", "private", "shareable", "host", "none"),
            "UTSMode": ("", "host"),
            "UsernsMode": ("", "host"),
            "CgroupnsMode": ("", "private", "host"),
        }[mode_key]
        if value not in allowed:
            raise InvalidParameter("dockyard does not support %s=%s" % (mode_key, value))
    security_options(out.get("SecurityOpt"))
    if out.get("Devices"):
        raise InvalidParameter("dockyard does not support --device yet")
    if out.get("Init"):  # accepting it would run the command as PID 1 while the user asked for an init
        raise InvalidParameter("dockyard does not support --init yet: the engine ships no init process (docker-init)")
    return out


# Go's strconv.ParseBool, which dockerd uses for no-new-privileges=<bool>.
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
# Values that ask for no confinement from a mechanism the engine does not have: honoured by doing nothing.
_OPT_OUTS = {"apparmor": ("unconfined",), "label": ("disable",)}
SECCOMP_UNAVAILABLE = "seccomp profiles are not supported on this daemon, you cannot specify a custom seccomp profile"


def _split_security_opt(opt):
    """dockerd's parseSecurityOpt split: key=value, the deprecated key:value, bare flags."""
    if not isinstance(opt, str):
        raise InvalidParameter("invalid --security-opt: %r" % (opt,))
    if opt == "no-new-privileges":
        return "no-new-privileges", "true"
    if opt == "disable":
        return "label", "disable"
    sep = "=" if "=" in opt else ":" if ":" in opt else None
    if sep is None:
        raise InvalidParameter('invalid --security-opt 1: "%s"' % opt)
    key, _, value = opt.partition(sep)
    return key, value


def security_options(opts):
    """Validate HostConfig.SecurityOpt -> {"no_new_privs": bool, "seccomp": "default" | "unconfined" | dict}.

    Only what the engine enforces is accepted: seccomp (Docker's default profile, unconfined, or a
    profile's JSON, which the docker CLI sends in place of the file name), no-new-privileges, and
    the opt-outs apparmor=unconfined / label=disable of mechanisms dockyard does not have.
    """
    result = {"no_new_privs": True, "seccomp": "default", "seccomp_explicit": False}
    for opt in opts or []:
        key, value = _split_security_opt(opt)
        if key == "no-new-privileges":
            if value not in _GO_BOOLS:
                raise InvalidParameter('invalid --security-opt 2: "%s"' % opt)
            result["no_new_privs"] = _GO_BOOLS[value]
        elif key == "seccomp":
            result["seccomp"] = _seccomp_choice(value)
            result["seccomp_explicit"] = True
        elif key in _OPT_OUTS:
            if value not in _OPT_OUTS[key]:
                raise InvalidParameter(
                    '--security-opt "%s" cannot be enforced: dockyard has no %s support (only %s=%s is accepted)'
                    % (opt, "AppArmor" if key == "apparmor" else "SELinux labeling", key, _OPT_OUTS[key][0])
                )
        else:
            raise InvalidParameter('invalid --security-opt 2: "%s"' % opt)
    if result["seccomp"] != "unconfined" and result["seccomp_explicit"] and not seccomp.available():
        raise InvalidParameter(SECCOMP_UNAVAILABLE)
    return result


def _seccomp_choice(value):
    if value == "unconfined":
        return "unconfined"
    if value in ("", "builtin"):
        return "default"
    try:
        return seccomp.parse_profile(value)
    except seccomp.ProfileError as exc:
        raise InvalidParameter(str(exc)) from None


def no_new_privs(hc):
    """dockyard default: on; --security-opt no-new-privileges=false turns it off."""
    return security_options(hc.get("SecurityOpt"))["no_new_privs"]


# -- mounts --------------------------------------------------------------------------------------
def _split_bind(spec):
    parts = spec.split(":")
    if len(parts) == 1:
        return None, parts[0], ""
    if len(parts) == 2:
        return parts[0], parts[1], ""
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise InvalidParameter("invalid volume specification: '%s'" % spec)


def anonymous_volume(dest: str) -> dict:
    """The mount point record of an anonymous volume at `dest` (`-v /data`, or the image's VOLUME)."""
    return {
        "Type": "volume",
        "Name": "",
        "Source": "",
        "Destination": dest,
        "Driver": "local",
        "Mode": "",
        "RW": True,
        "Propagation": "",
        "Anonymous": True,
    }


def parse_mounts(hc, cfg):
    """HostConfig Binds/Mounts/Tmpfs + Config.Volumes -> mount point records (unresolved volumes)."""
    points, seen = [], set()

    def add(point):
        dest = os.path.normpath(point["Destination"])
        if not dest.startswith("/"):
            raise InvalidParameter("invalid mount config: mount path must be absolute: %s" % dest)
        if dest == "/" or dest == "//":  # normpath keeps a leading '//'; mounting over the root is Docker's 400 too
            raise InvalidParameter("invalid mount config: destination can't be '/'")
        if dest in seen:
            raise InvalidParameter("Duplicate mount point: %s" % dest)
        point["Destination"] = dest
        seen.add(dest)
        points.append(point)

    for spec in hc.get("Binds") or []:
        source, dest, opts = _split_bind(spec)
        if source is None:
            add(anonymous_volume(dest))
            continue
        words = [w for w in opts.split(",") if w]
        rw = "ro" not in words
        prop = next((w for w in words if w in _PROPAGATIONS), "")
        for w in words:
            if w not in ("ro", "rw", "z", "Z", "nocopy") and w not in _PROPAGATIONS:
                raise InvalidParameter("invalid mode: %s" % w)
        if source.startswith("/"):
            add(
                {
                    "Type": "bind",
                    "Source": os.path.normpath(source),
                    "Destination": dest,
                    "Mode": opts,
                    "RW": rw,
                    "Propagation": prop or "rprivate",
                    "CreateSource": True,
                }
            )
        else:
            add(
                {
                    "Type": "volume",
                    "Name": source,
                    "Source": "",
                    "Destination": dest,
                    "Driver": "local",
                    "Mode": opts or "z",
                    "RW": rw,
                    "Propagation": "",
                    "NoCopy": "nocopy" in words,
                }
            )
    for m in hc.get("Mounts") or []:
        kind = (m.get("Type") or "").lower()
        target = m.get("Target") or m.get("Destination") or ""
        ro = bool(m.get("ReadOnly"))
        if kind == "bind":
            src = m.get("Source") or ""
            if not src.startswith("/"):
                raise InvalidParameter(
                    "invalid mount config for type \"bind\": invalid mount path: '%s' mount path must be absolute" % src
                )
            if not os.path.exists(src) and not (m.get("BindOptions") or {}).get("CreateMountpoint"):
                raise InvalidParameter(
                    'invalid mount config for type "bind": bind source path does not exist: %s' % src
                )
            prop = (m.get("BindOptions") or {}).get("Propagation") or "rprivate"
            add(
                {
                    "Type": "bind",
                    "Source": os.path.normpath(src),
                    "Destination": target,
                    "Mode": "",
                    "RW": not ro,
                    "Propagation": prop,
                    "CreateSource": True,
                }
            )
        elif kind == "volume":
            vopts = m.get("VolumeOptions") or {}
            add(
                {
                    "Type": "volume",
                    "Name": m.get("Source") or "",
                    "Source": "",
                    "Destination": target,
                    "Driver": "local",
                    "Mode": "z",
                    "RW": not ro,
                    "Propagation": "",
                    "Anonymous": not m.get("Source"),
                    "NoCopy": bool(vopts.get("NoCopy")),
                    "Labels": vopts.get("Labels") or {},
                }
            )
        elif kind == "tmpfs":
            topts = m.get("TmpfsOptions") or {}
            words = []
            if topts.get("SizeBytes"):
                words.append("size=%d" % int(topts["SizeBytes"]))
            if topts.get("Mode"):
                words.append("mode=%o" % int(topts["Mode"]))
            if ro:
                words.append("ro")
            add(
                {
                    "Type": "tmpfs",
                    "Source": "",
                    "Destination": target,
                    "Mode": ",".join(words),
                    "RW": not ro,
                    "Propagation": "",
                }
            )
        else:
            raise InvalidParameter("invalid mount config: mount type unknown: %r" % kind)
    for dest, opts in (hc.get("Tmpfs") or {}).items():
        add(
            {
                "Type": "tmpfs",
                "Source": "",
                "Destination": dest,
                "Mode": opts or "",
                "RW": "ro" not in (opts or "").split(","),
                "Propagation": "",
            }
        )
    for dest in sorted((cfg.get("Volumes") or {}).keys()):
        if os.path.normpath(dest) in seen:
            continue
        add(anonymous_volume(dest))
    return points


def resolve_volumes(points, volumes):
    """Create/find the named and anonymous volumes; fill Source and Name."""
    created = []
    for point in points:
        if point["Type"] != "volume":
            continue
        if volumes is None:
            raise InvalidParameter("volumes are not available in this engine")
        name = point.get("Name") or None
        anonymous = bool(point.get("Anonymous")) or not name
        vol = volumes.create(name=name, labels=point.pop("Labels", None) or None, anonymous=anonymous)
        point["Name"] = vol.name
        point["Source"] = vol.mountpoint
        point["Anonymous"] = anonymous
        created.append(vol.name)
    return created
