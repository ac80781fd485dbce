"""System resource: /_ping, /version and /info."""

import platform
import threading

from dockyard.engine import hostinfo
from dockyard.engine.api.responses import Response
from dockyard.engine.buildinfo import build_info
from dockyard.engine.config import registry_config
from dockyard.engine.runtime import seccomp
from dockyard.engine.timefmt import rfc3339nano

PING_HEADERS = [
    ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ("Pragma", "no-cache"),
    ("Builder-Version", "1"),  # classic builder only (no BuildKit)
    ("Swarm", "inactive"),
]
RUNTIME_NAME = "dockyard"


def register(router, engine):
    router.add("GET", "/_ping", ping)
    router.add("HEAD", "/_ping", ping)
    router.add("GET", "/version", version)
    router.add("GET", "/info", info)


def ping(req):
    if req.method == "HEAD":
        # Content-Length: 0 comes from the empty body.
        return Response(200, b"", "text/plain; charset=utf-8", PING_HEADERS)
    return Response(200, b"OK", "text/plain; charset=utf-8", PING_HEADERS)


def python_version():
    """Stands in for GoVersion, e.g. 'python3.11.7'."""
    return "python" + platform.python_version()


def version_payload():
    build = build_info()
    kernel = hostinfo.kernel_version()
    arch = hostinfo.go_arch()
    details = {
        "ApiVersion": build["api_version"],
        "MinAPIVersion": build["min_api_version"],
        "GitCommit": build["commit"],
        "GoVersion": python_version(),
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "BuildTime": build["build_time"],
        "Experimental": "false",
    }
    return {
        "Platform": {"Name": "dockyard engine"},
        "Components": [{"Name": "Engine", "Version": build["version"], "Details": details}],
        "Version": build["version"],
        "ApiVersion": build["api_version"],
        "MinAPIVersion": build["min_api_version"],
        "GitCommit": build["commit"],
        "GoVersion": python_version(),
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "Experimental": False,
        "BuildTime": build["build_time"],
    }


def version(req):
    return version_payload()


def security_options(remapped: bool = False) -> list[str]:
    """/info SecurityOptions, as dockerd words them, for what every container gets by default here:
    seccomp with Docker's default profile (when libseccomp is there), a user namespace when the
    engine remaps (--userns-remap), no_new_privs (dockyard's default, dockerd's
    --no-new-privileges), and a private cgroup namespace on cgroup v2."""
    out = ["name=seccomp,profile=builtin"] if seccomp.available() else []
    if remapped:
        out.append("name=userns")
    out.append("name=no-new-privileges")
    if hostinfo.cgroup_version() == "2":
        out.append("name=cgroupns")
    return out


def _warnings(features, cfg, engine):
    out = list(engine.warnings)
    reason = seccomp.unavailable_reason()
    if reason is not None:
        out.append("WARNING: seccomp is not enforced (%s): containers run without Docker's default profile" % reason)
    for key, text in (
        ("MemoryLimit", "No memory limit support"),
        ("SwapLimit", "No swap limit support"),
        ("CpuCfsQuota", "No cpu cfs quota support"),
        ("CpuCfsPeriod", "No cpu cfs period support"),
        ("CPUShares", "No cpu shares support"),
        ("CPUSet", "No cpuset support"),
        ("PidsLimit", "No pids limit support"),
    ):
        if not features.get(key):
            out.append("WARNING: " + text)
    return out


def info_payload(engine):
    cfg = engine.config
    build = build_info()
    features = hostinfo.cgroup_features()
    osr = hostinfo.os_release()
    data = {
        "ID": engine.id,
        "Containers": 0,
        "ContainersRunning": 0,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": 0,
        "Driver": cfg.storage_driver,
        "DriverStatus": [["Backing Filesystem", hostinfo.backing_filesystem(cfg.data_root)]],
        "DockerRootDir": cfg.data_root,
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "host", "null"],
            "Authorization": None,
            "Log": ["json-file"],
        },
        "KernelMemoryTCP": False,
        "BridgeNfIptables": False,  # deprecated in the API: always false
        "BridgeNfIp6tables": False,
        "IPv4Forwarding": hostinfo.ipv4_forwarding(),
        "Debug": cfg.log_level == "debug",
        "NFd": hostinfo.open_fds(),
        "NGoroutines": threading.active_count(),
        "SystemTime": rfc3339nano(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": hostinfo.cgroup_version(),
        "NEventsListener": 0,
        "KernelVersion": hostinfo.kernel_version(),
        "OperatingSystem": hostinfo.operating_system(),
        "OSVersion": osr.get("VERSION_ID", ""),
        "OSType": "linux",
        "Architecture": hostinfo.machine(),
        "NCPU": hostinfo.cpu_count(),
        "MemTotal": hostinfo.mem_total(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": registry_config(cfg),
        "GenericResources": None,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": hostinfo.hostname(),
        "Labels": list(cfg.labels),
        "ExperimentalBuild": False,
        "ServerVersion": build["version"],
        "Runtimes": {RUNTIME_NAME: {"path": "dockyard-engine"}},
        "DefaultRuntime": RUNTIME_NAME,
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": ""},
        "RuncCommit": {"ID": ""},
        "InitCommit": {"ID": ""},
        # Only what is enforced (no AppArmor, no SELinux; user namespaces with --userns-remap).
        "SecurityOptions": security_options(getattr(engine.containers, "idmap", None) is not None),
        "CDISpecDirs": [],
        "Warnings": _warnings(features, cfg, engine),
    }
    data.update(features)
    data.update(engine.collect_info())
    return data


def info(req):
    return info_payload(req.engine)
