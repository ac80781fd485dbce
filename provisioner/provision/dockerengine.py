"""Docker Engine as a machine's engine (`dockyard create --engine docker`).

Uses the dockerd the host has, or installs it with the host's package manager, and configures it as Docker
Machine did: TLS-verified on tcp://0.0.0.0:PORT with the machine's CA and server cert, plus the unix socket.
dockerd's settings go to one file of ours (/etc/dockyard/docker-daemon.json, passed with --config-file), so a
package's own /etc/docker/daemon.json never clashes with them; the service definition (systemd drop-in,
OpenRC conf.d, or a control script on hosts without init) only says how to start dockerd. live-restore is on:
restarting dockerd for new certificates or an upgrade keeps running containers running.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dockyard import __version__, templates
from dockyard.provisioner.core.errors import ProvisionError, UsageError
from dockyard.provisioner.provision import initsys, osinfo

if TYPE_CHECKING:
    from dockyard.provisioner.core.ssh import SSHSession

ENGINES = ("dockyard", "docker")
DEFAULT_ENGINE = "dockyard"
DAEMON_CONFIG = initsys.CONFIG_DIR + "/docker-daemon.json"
UNIX_SOCKET = "unix:///var/run/docker.sock"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
# Package names per OS family, tried in order (Fedora calls it moby-engine, RHEL-likes often docker).
PACKAGES: dict[str, tuple[str, ...]] = {
    "debian": ("docker.io",),
    "redhat": ("moby-engine", "docker"),
    "alpine": ("docker",),
}

# --engine-opt keys that dockyard sets itself; giving them would make dockerd refuse to start.
_OWNED_OPTS = {
    "H": "--engine-port",
    "host": "--engine-port",
    "hosts": "--engine-port",
    "tls": "the machine's certificates",
    "tlsverify": "the machine's certificates",
    "tlscacert": "the machine's certificates",
    "tlscert": "the machine's certificates",
    "tlskey": "the machine's certificates",
    "config-file": "--engine-opt KEY=VALUE for each setting",
    "pidfile": "nothing (dockyard places dockerd's pidfile)",
    "label": "--engine-label",
    "insecure-registry": "--engine-insecure-registry",
    "registry-mirror": "--engine-registry-mirror",
    "storage-driver": "--engine-storage-driver",
}
# Options only the dockyard engine knows.
_DOCKYARD_ONLY_OPTS = ("registry-pull",)


def _split_opt(item: str) -> tuple[str, str | None]:
    key, sep, value = item.partition("=")
    return key.lstrip("-"), (value if sep else None)


def check_options(engine_options: Mapping[str, Any]) -> None:
    """Refuse --engine-opt values that dockerd cannot take here, with what to use instead."""
    for item in engine_options.get("ArbitraryFlags", []):
        key, value = _split_opt(item)
        if key in _OWNED_OPTS:
            raise UsageError(f'--engine-opt "{item}": dockyard sets {key} for Docker Engine; use {_OWNED_OPTS[key]}')
        if key in _DOCKYARD_ONLY_OPTS:
            raise UsageError(f'--engine-opt "{item}": {key} is an option of the dockyard engine, not of dockerd')
        if key == "live-restore" and value not in (None, "true", "false"):
            raise UsageError(f'--engine-opt "{item}": live-restore is true or false')


def daemon_config(engine_options: Mapping[str, Any], port: int, swarm: bool = False) -> dict[str, Any]:
    """dockerd's config file (docker-daemon.json) from the machine's EngineOptions. A swarm node runs without
    live-restore: dockerd refuses swarm mode with it (its tasks are restarted by the swarm instead)."""
    live_restore = not swarm
    for item in engine_options.get("ArbitraryFlags", []):
        key, value = _split_opt(item)
        if key == "live-restore" and not swarm:
            live_restore = value != "false"
    return {
        "hosts": [f"tcp://0.0.0.0:{port}", UNIX_SOCKET],
        "tlsverify": True,
        "tlscacert": initsys.CONFIG_DIR + "/ca.pem",
        "tlscert": initsys.CONFIG_DIR + "/server.pem",
        "tlskey": initsys.CONFIG_DIR + "/server-key.pem",
        # Restarting dockerd (new certs, upgrades) must not stop the containers.
        "live-restore": live_restore,
        "labels": list(engine_options.get("Labels", [])),
        "storage-driver": engine_options.get("StorageDriver") or "overlay2",
        "insecure-registries": list(engine_options.get("InsecureRegistry", [])),
        "registry-mirrors": list(engine_options.get("RegistryMirror", [])),
    }


def dockerd_args(engine_options: Mapping[str, Any]) -> list[str]:
    """--engine-opt KEY=VALUE -> --KEY=VALUE on dockerd's command line (as Docker Machine); live-restore is
    in the config file instead."""
    args = []
    for item in engine_options.get("ArbitraryFlags", []):
        key, value = _split_opt(item)
        if key == "live-restore":
            continue
        args.append(f"--{key}" if value is None else f"--{key}={value}")
    return args


# --- the service that runs dockerd, per init system ----------------------------------------------------------
class DockerService:
    """How dockerd is started on a host with init system `init` (systemd, openrc, none)."""

    def __init__(
        self,
        session: SSHSession | None,
        init: str,
        machine: str,
        engine_options: Mapping[str, Any],
        dockerd: str = "/usr/bin/dockerd",
        containerd_unit: bool = False,
    ) -> None:
        if init not in ("systemd", "openrc", "none"):
            raise ProvisionError(f"unknown init system {init!r}")
        self.s = session
        self.init = init
        self.machine = machine
        self.engine_options = engine_options
        self.dockerd = dockerd
        self.containerd_unit = containerd_unit

    @property
    def ctl_path(self) -> str:
        return "/usr/local/lib/dockyard/dockerd-ctl"

    @property
    def log_path(self) -> str:
        return "/var/log/docker.log" if self.init == "openrc" else "/var/log/dockyard-dockerd.log"

    @property
    def register_cmd(self) -> str:
        return {
            "systemd": "systemctl daemon-reload && { systemctl enable docker.service >/dev/null 2>&1 || true; }",
            "openrc": "rc-update add docker default >/dev/null 2>&1 || true",
            "none": "true",
        }[self.init]

    @property
    def restart_cmd(self) -> str:
        return {
            "systemd": "systemctl restart docker.service",
            "openrc": "rc-service docker restart",
            "none": f"{self.ctl_path} restart",
        }[self.init]

    @property
    def stop_cmd(self) -> str:
        return {
            "systemd": "systemctl stop docker.service",
            "openrc": "rc-service docker stop",
            "none": f"{self.ctl_path} stop",
        }[self.init]

    def argv(self) -> list[str]:
        argv = [self.dockerd, "--config-file", DAEMON_CONFIG]
        if self.init == "systemd" and self.containerd_unit:
            # The distribution runs containerd as its own unit (Debian, Fedora); use it, as its docker.service does.
            argv.append(f"--containerd={CONTAINERD_SOCKET}")
        return argv + dockerd_args(self.engine_options)

    def service_file(self) -> tuple[str, bytes, int]:
        """(remote path, content, mode) of what tells the init system how to run dockerd."""
        env = list(self.engine_options.get("Env", []))
        ctx: dict[str, Any] = dict(
            dockyard_version=__version__,
            machine=self.machine,
            config_path=DAEMON_CONFIG,
            env=env,
            env_pairs=initsys.env_pairs(env),
        )
        if self.init == "systemd":
            text = templates.render("docker-dropin.conf.j2", argv=self.argv(), **ctx)
            return "/etc/systemd/system/docker.service.d/10-dockyard.conf", text.encode(), 0o644
        if self.init == "openrc":
            text = templates.render("docker-openrc.conf.j2", args=self.argv()[1:], **ctx)
            return "/etc/conf.d/docker", text.encode(), 0o644
        text = templates.render(
            "dockerd-ctl.sh.j2",
            argv=self.argv(),
            ctl_path=self.ctl_path,
            pidfile="/var/run/docker.pid",
            log_path=self.log_path,
            **ctx,
        )
        return self.ctl_path, text.encode(), 0o755

    def _session(self) -> SSHSession:
        if self.s is None:
            raise ProvisionError("no SSH session to the host")
        return self.s

    def restart(self) -> None:
        self._session().run(self.restart_cmd, sudo=True)

    def stop(self) -> None:
        self._session().run(self.stop_cmd, sudo=True, check=False)

    def log_command(self, lines: int = 30, follow: bool = False) -> str:
        """The shell command that prints dockerd's last lines (and, with follow, the ones to come)."""
        if self.init == "systemd":
            return f"journalctl -u docker.service -n {int(lines)} --no-pager -o cat" + (" -f" if follow else "")
        if follow:
            return f"tail -n {int(lines)} -F {self.log_path}"
        return f"tail -n {int(lines)} {self.log_path} 2>/dev/null"

    def logs(self, lines: int = 30) -> str:
        return self._session().run(self.log_command(lines), sudo=True, check=False).stdout


def service_for(session: SSHSession, facts: Mapping[str, Any], machine: str, engine_options: Mapping[str, Any]):
    """The service handle of an already provisioned host (from the stored facts)."""
    return DockerService(
        session,
        facts.get("Init", "none"),
        machine,
        engine_options,
        facts.get("Dockerd", "/usr/bin/dockerd"),
        bool(facts.get("ContainerdUnit")),
    )


# --- install, configure, upgrade ------------------------------------------------------------------------------
_FIND_DOCKERD = (
    "for p in $(command -v dockerd 2>/dev/null) /usr/bin/dockerd /usr/sbin/dockerd /usr/local/bin/dockerd; do "
    '[ -x "$p" ] && { echo "$p"; exit 0; }; done; exit 1'
)
_CONTAINERD_UNIT = (
    "systemctl list-unit-files containerd.service 2>/dev/null | grep -q '^containerd.service' && echo yes || echo no"
)


def install_command(info: osinfo.OSInfo) -> str:
    """The shell command that installs Docker Engine with the host's package manager."""
    names = PACKAGES[info.family]
    return " || ".join(f"{{ {info.install_command([name])}; }}" for name in names)


def find_dockerd(session: SSHSession) -> str:
    r = session.run(_FIND_DOCKERD, sudo=True, check=False)
    return r.stdout.strip().splitlines()[0] if r.exit_status == 0 and r.stdout.strip() else ""


def ensure_dockerd(session: SSHSession, info: osinfo.OSInfo, log: Callable[[str], None]) -> str:
    """Path of the host's dockerd; installs Docker Engine from the OS's packages when there is none."""
    path = find_dockerd(session)
    if path:
        log(f"Using the host's Docker Engine ({path})...")
        return path
    log(f"Installing Docker Engine ({' or '.join(PACKAGES[info.family])}) with the host's package manager...")
    session.run(install_command(info), sudo=True, timeout=1800)
    path = find_dockerd(session)
    if not path:
        raise ProvisionError("dockerd is still missing on the host after installing Docker Engine")
    return path


def configure(
    session: SSHSession,
    facts: Any,
    machine_name: str,
    engine_options: Mapping[str, Any],
    port: int,
    log: Callable[[str], None],
    swarm: bool = False,
) -> tuple[list[tuple[str, bytes, int]], str, dict[str, Any]]:
    """Make sure dockerd is installed; return (files to write, command that (re)starts dockerd after they are
    written, facts to store)."""
    check_options(engine_options)
    dockerd = ensure_dockerd(session, facts.os, log)
    containerd_unit = facts.init == "systemd" and session.run(_CONTAINERD_UNIT, check=False).stdout.strip() == "yes"
    service = DockerService(session, facts.init, machine_name, engine_options, dockerd, containerd_unit)
    config = templates.render("docker-daemon.json.j2", config=daemon_config(engine_options, port, swarm)).encode()
    files = [(DAEMON_CONFIG, config, 0o644), service.service_file()]
    return (
        files,
        f"{service.register_cmd} && {service.restart_cmd}",
        {"Dockerd": dockerd, "ContainerdUnit": containerd_unit},
    )


# The package that owns dockerd, per OS family ($d = dockerd's path).
_OWNER = {
    "debian": 'dpkg-query -S "$d" 2>/dev/null | head -n1 | cut -d: -f1',
    "redhat": "rpm -qf --qf '%{NAME}\\n' \"$d\" 2>/dev/null | head -n1",
    "alpine": "apk info --who-owns \"$d\" 2>/dev/null | sed -n 's/.* is owned by \\(.*\\)-[^-]*-r[0-9]*$/\\1/p'",
}
_UPGRADE = {
    "debian": "DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o "
    'DPkg::Lock::Timeout=120 install -y --only-upgrade --no-install-recommends "$pkg"',
    "redhat": 'if command -v dnf >/dev/null; then dnf -y upgrade "$pkg"; else yum -y update "$pkg"; fi',
    "alpine": 'apk update && apk upgrade "$pkg"',
}


def upgrade_command(family: str, dockerd: str) -> str:
    """Upgrade the package that owns dockerd with the host's package manager; exit 3 when no package does."""
    return (
        f"d={shlex.quote(dockerd)}; pkg=$({_OWNER[family]}); "
        '[ -n "$pkg" ] || { echo "$d does not belong to a package" >&2; exit 3; }; '
        f"{_UPGRADE[family]}"
    )


def upgrade(session: SSHSession, facts: Mapping[str, Any], log: Callable[[str], None]) -> None:
    """The package manager's upgrade of Docker Engine (the caller restarts it)."""
    dockerd = facts.get("Dockerd") or find_dockerd(session)
    family = facts.get("OSFamily", "")
    if family not in _UPGRADE:
        raise ProvisionError(f"cannot upgrade Docker Engine on OS family {family!r}")
    log("Upgrading Docker Engine with the host's package manager...")
    r = session.run(upgrade_command(family, dockerd), sudo=True, check=False, timeout=1800)
    if r.exit_status == 3:
        raise ProvisionError(
            f"{dockerd} was not installed from a package; upgrade it by hand, then run dockyard provision"
        )
    if r.exit_status != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-10:])
        raise ProvisionError(f"upgrading Docker Engine failed (exit {r.exit_status}):\n{tail}")
