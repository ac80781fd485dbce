"""The request bodies the API takes, as schemas (engine/api/schema.py) of moby's Go types (API 1.50).

Only types and ranges are declared here; what a value means is checked by the part that uses it
(engine/runtime/create.py for HostConfig semantics, the network and volume stores for names).
"""

from __future__ import annotations

from dockyard.engine.api.schema import EMPTY_STRUCT, Any_, Bool, Int, List, Map, Obj, Str, StrSlice
from dockyard.engine.errors import InvalidParameter

STR = Str()
BOOL = Bool()
INT64 = Int()
STRINGS = List(STR)
STRING_MAP = Map(STR)


def duration(name: str) -> Int:
    """A Healthcheck time.Duration (nanoseconds); Docker refuses negative ones with this message."""
    return Int("time.Duration", 0, message="%s in Healthcheck cannot be less than 1ms" % name)


# [2]uint (rows, columns); a terminal larger than 65535 cells does not exist.
CONSOLE_SIZE = List(Int("uint", 0, 65535, "invalid console size %d: rows and columns go from 0 to 65535"))

THROTTLE_DEVICE = Obj("blkiodev.ThrottleDevice", {"Path": STR, "Rate": Int("uint64")})

RESOURCES = {
    "CpuShares": Int("int64", 0, 262144, "Invalid CPU shares (%d): the range is from 2 to 262144 (0 for the default)"),
    "Memory": INT64,  # < 6MB is refused with Docker's message by runtime/create.py
    "NanoCpus": INT64,  # range refused with Docker's message by runtime/create.py
    "CgroupParent": STR,
    "BlkioWeight": Int("uint16", 0, 1000, "Range of blkio weight is from 10 to 1000"),
    "BlkioWeightDevice": List(Obj("blkiodev.WeightDevice", {"Path": STR, "Weight": Int("uint16", 0, 1000)})),
    "BlkioDeviceReadBps": List(THROTTLE_DEVICE),
    "BlkioDeviceWriteBps": List(THROTTLE_DEVICE),
    "BlkioDeviceReadIOps": List(THROTTLE_DEVICE),
    "BlkioDeviceWriteIOps": List(THROTTLE_DEVICE),
    "CpuPeriod": INT64,
    "CpuQuota": INT64,
    "CpuRealtimePeriod": Int("int64", 0),
    "CpuRealtimeRuntime": Int("int64", 0),
    "CpusetCpus": STR,
    "CpusetMems": STR,
    "Devices": List(
        Obj("container.DeviceMapping", {"PathOnHost": STR, "PathInContainer": STR, "CgroupPermissions": STR})
    ),
    "DeviceCgroupRules": STRINGS,
    "DeviceRequests": List(
        Obj(
            "container.DeviceRequest",
            {"Driver": STR, "Count": INT64, "DeviceIDs": STRINGS, "Capabilities": List(STRINGS), "Options": STRING_MAP},
        )
    ),
    "KernelMemory": INT64,
    "KernelMemoryTCP": INT64,
    "MemoryReservation": INT64,
    "MemorySwap": INT64,
    "MemorySwappiness": Int("int64", -1, 100, "Invalid value: %d, valid memory swappiness range is 0-100"),
    "OomKillDisable": BOOL,
    "PidsLimit": INT64,
    "Ulimits": List(Obj("container.Ulimit", {"Name": STR, "Soft": INT64, "Hard": INT64})),
    "CpuCount": Int("int64", 0),
    "CpuPercent": Int("int64", 0, 100),
    "IOMaximumIOps": Int("uint64"),
    "IOMaximumBandwidth": Int("uint64"),
}

RESTART_POLICY = Obj("container.RestartPolicy", {"Name": STR, "MaximumRetryCount": INT64})

MOUNT = Obj(
    "mount.Mount",
    {
        "Type": STR,
        "Source": STR,
        "Target": STR,
        "ReadOnly": BOOL,
        "Consistency": STR,
        "BindOptions": Obj(
            "mount.BindOptions",
            {
                "Propagation": STR,
                "NonRecursive": BOOL,
                "CreateMountpoint": BOOL,
                "ReadOnlyNonRecursive": BOOL,
                "ReadOnlyForceRecursive": BOOL,
            },
        ),
        "VolumeOptions": Obj(
            "mount.VolumeOptions",
            {
                "NoCopy": BOOL,
                "Labels": STRING_MAP,
                "Subpath": STR,
                "DriverConfig": Obj("mount.Driver", {"Name": STR, "Options": STRING_MAP}),
            },
        ),
        "TmpfsOptions": Obj(
            "mount.TmpfsOptions",
            {
                "SizeBytes": Int("int64", 0, message="invalid tmpfs size %d: it can not be negative"),
                "Mode": Int("os.FileMode", 0, 0o7777, "invalid tmpfs mode %o: permission bits only"),
                "Options": List(STRINGS),
            },
        ),
    },
)

HOST_CONFIG = Obj(
    "container.HostConfig",
    dict(
        RESOURCES,
        Binds=STRINGS,
        ContainerIDFile=STR,
        LogConfig=Obj("container.LogConfig", {"Type": STR, "Config": STRING_MAP}),
        NetworkMode=STR,
        PortBindings=Map(List(Obj("nat.PortBinding", {"HostIp": STR, "HostPort": STR}))),
        RestartPolicy=RESTART_POLICY,
        AutoRemove=BOOL,
        VolumeDriver=STR,
        VolumesFrom=STRINGS,
        ConsoleSize=CONSOLE_SIZE,
        Annotations=STRING_MAP,
        CapAdd=StrSlice(),
        CapDrop=StrSlice(),
        CgroupnsMode=STR,
        Dns=STRINGS,
        DnsOptions=STRINGS,
        DnsSearch=STRINGS,
        ExtraHosts=STRINGS,
        GroupAdd=STRINGS,
        IpcMode=STR,
        Cgroup=STR,
        Links=STRINGS,
        OomScoreAdj=Int("int", -1000, 1000, "Invalid value %d, range for oom score adj is [-1000, 1000]"),
        PidMode=STR,
        Privileged=BOOL,
        PublishAllPorts=BOOL,
        ReadonlyRootfs=BOOL,
        SecurityOpt=STRINGS,
        StorageOpt=STRING_MAP,
        Tmpfs=STRING_MAP,
        UTSMode=STR,
        UsernsMode=STR,
        ShmSize=Int("int64", 0, message="SHM size can not be less than 0"),
        Sysctls=STRING_MAP,
        Runtime=STR,
        Isolation=STR,
        MaskedPaths=STRINGS,
        ReadonlyPaths=STRINGS,
        Init=BOOL,
        Mounts=List(MOUNT),
    ),
)

HEALTHCHECK = Obj(
    "container.HealthConfig",
    {
        "Test": StrSlice(),
        "Interval": duration("Interval"),
        "Timeout": duration("Timeout"),
        "StartPeriod": duration("StartPeriod"),
        "StartInterval": duration("StartInterval"),
        "Retries": Int("int", 0, message="Retries in Healthcheck cannot be negative"),
    },
)

CONTAINER_CONFIG = {
    "Hostname": STR,
    "Domainname": STR,
    "User": STR,
    "AttachStdin": BOOL,
    "AttachStdout": BOOL,
    "AttachStderr": BOOL,
    "ExposedPorts": Map(EMPTY_STRUCT),
    "Tty": BOOL,
    "OpenStdin": BOOL,
    "StdinOnce": BOOL,
    "Env": STRINGS,
    "Cmd": StrSlice(),
    "Healthcheck": HEALTHCHECK,
    "ArgsEscaped": BOOL,
    "Image": STR,
    "Volumes": Map(EMPTY_STRUCT),
    "WorkingDir": STR,
    "Entrypoint": StrSlice(),
    "NetworkDisabled": BOOL,
    "MacAddress": STR,
    "OnBuild": STRINGS,
    "Labels": STRING_MAP,
    "StopSignal": STR,
    "StopTimeout": Int("int", -1, message="invalid StopTimeout %d: -1 (wait forever) is the smallest value"),
    "Shell": STRINGS,
}

ENDPOINT_SETTINGS = Obj(
    "network.EndpointSettings",
    {
        "IPAMConfig": Obj(
            "network.EndpointIPAMConfig", {"IPv4Address": STR, "IPv6Address": STR, "LinkLocalIPs": STRINGS}
        ),
        "Links": STRINGS,
        "Aliases": STRINGS,
        "DriverOpts": STRING_MAP,
        "GwPriority": INT64,
        "NetworkID": STR,
        "EndpointID": STR,
        "Gateway": STR,
        "IPAddress": STR,
        "IPPrefixLen": Int("int"),
        "IPv6Gateway": STR,
        "GlobalIPv6Address": STR,
        "GlobalIPv6PrefixLen": Int("int"),
        "MacAddress": STR,
        "DNSNames": STRINGS,
    },
)

CONTAINER_CREATE = Obj(
    "container.CreateRequest",
    dict(
        CONTAINER_CONFIG,
        HostConfig=HOST_CONFIG,
        NetworkingConfig=Obj("network.NetworkingConfig", {"EndpointsConfig": Map(ENDPOINT_SETTINGS)}),
    ),
)

CONTAINER_UPDATE = Obj("container.UpdateConfig", dict(RESOURCES, RestartPolicy=RESTART_POLICY))

EXEC_CREATE = Obj(
    "container.ExecOptions",
    {
        "User": STR,
        "Privileged": BOOL,
        "Tty": BOOL,
        "ConsoleSize": CONSOLE_SIZE,
        "AttachStdin": BOOL,
        "AttachStderr": BOOL,
        "AttachStdout": BOOL,
        "Detach": BOOL,
        "DetachKeys": STR,
        "Env": STRINGS,
        "WorkingDir": STR,
        "Cmd": STRINGS,
    },
)

EXEC_START = Obj("container.ExecStartOptions", {"Detach": BOOL, "Tty": BOOL, "ConsoleSize": CONSOLE_SIZE})

NETWORK_CREATE = Obj(
    "network.CreateRequest",
    {
        "Name": STR,
        "CheckDuplicate": BOOL,
        "Driver": STR,
        "Scope": STR,
        "EnableIPv4": BOOL,
        "EnableIPv6": BOOL,
        "IPAM": Obj(
            "network.IPAM",
            {
                "Driver": STR,
                "Options": STRING_MAP,
                "Config": List(
                    Obj(
                        "network.IPAMConfig",
                        {"Subnet": STR, "IPRange": STR, "Gateway": STR, "AuxiliaryAddresses": STRING_MAP},
                    )
                ),
            },
        ),
        "Internal": BOOL,
        "Attachable": BOOL,
        "Ingress": BOOL,
        "ConfigOnly": BOOL,
        "ConfigFrom": Obj("network.ConfigReference", {"Network": STR}),
        "Options": STRING_MAP,
        "Labels": STRING_MAP,
    },
)

VOLUME_CREATE = Obj(
    "volume.CreateOptions",
    {"Name": STR, "Driver": STR, "DriverOpts": STRING_MAP, "Labels": STRING_MAP, "ClusterVolumeSpec": Any_()},
)


MIN_MEMORY = 6 * 1024 * 1024
ULIMIT_NAMES = frozenset(
    (
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    )
)


def check_resources(res: dict, ncpu: int) -> None:
    """The range checks dockerd applies to Resources (create and update), with its messages.

    Types were checked by the schema; here are the values that no cgroup may be given: negative or
    absurd sizes, and pairs that contradict each other. -1 means "unlimited" where Docker says so.
    """
    memory = res.get("Memory") or 0
    if memory and memory < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    reservation = res.get("MemoryReservation") or 0
    if reservation and reservation < MIN_MEMORY:
        raise InvalidParameter("Minimum memory reservation allowed is 6MB")
    if memory and reservation and memory < reservation:
        raise InvalidParameter("Minimum memory limit can not be less than memory reservation limit, see usage")
    swap = res.get("MemorySwap") or 0
    if swap < -1:
        raise InvalidParameter("invalid MemorySwap %d: -1 (unlimited) is the smallest value" % swap)
    if memory and swap > 0 and swap < memory:
        raise InvalidParameter("Minimum memoryswap limit should be larger than memory limit, see usage")
    nano = res.get("NanoCpus") or 0
    if nano and (nano < 10000000 or nano > ncpu * 1000000000):
        raise InvalidParameter(
            "Range of CPUs is from 0.01 to %d.00, as there are only %d CPUs available" % (ncpu, ncpu)
        )
    period = res.get("CpuPeriod") or 0
    if period and not 1000 <= period <= 1000000:
        raise InvalidParameter("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)")
    quota = res.get("CpuQuota") or 0
    if quota < -1 or 0 < quota < 1000:
        raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    if nano and (period or quota):
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    pids = res.get("PidsLimit")
    if pids is not None and pids < -1:
        raise InvalidParameter("invalid PidsLimit %d: 0 or -1 is unlimited, a limit is positive" % pids)
    for ulimit in res.get("Ulimits") or []:
        name = (ulimit or {}).get("Name") or ""
        if name not in ULIMIT_NAMES:
            raise InvalidParameter("invalid ulimit type: %s" % name)
        soft, hard = ulimit.get("Soft") or 0, ulimit.get("Hard") or 0
        if soft < -1 or hard < -1:
            raise InvalidParameter("invalid ulimit %s: a limit is -1 (unlimited) or not negative" % name)
        if hard != -1 and (soft == -1 or soft > hard):
            raise InvalidParameter("ulimit soft limit must be less than or equal to hard limit: %d > %d" % (soft, hard))
