"""The engine's service on the host, one class per init system: systemd, OpenRC, or none (a daemon script)."""

from dockyard import __version__, templates
from dockyard.provisioner.core.errors import ProvisionError

BUNDLE_PATH = "/usr/local/lib/dockyard/dockyard-engine.pyz"
CONFIG_DIR = "/etc/dockyard"
CONFIG_PATH = CONFIG_DIR + "/engine.json"
PIDFILE = "/run/dockyard/engine.pid"
LOG_PATH = "/var/log/dockyard-engine.log"


def env_pairs(env):
    """(KEY, VALUE) pairs of --engine-env items; refuses items without KEY=."""
    pairs = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProvisionError(f'invalid --engine-env "{item}": expected KEY=VALUE')
        pairs.append((key, value))
    return pairs


class InitSystem:
    name = "base"

    def __init__(self, session, machine, python, env):
        self.s = session
        self.machine = machine
        self.python = python
        self.env = list(env)

    def context(self):
        return dict(
            dockyard_version=__version__,
            machine=self.machine,
            python=self.python,
            bundle_path=BUNDLE_PATH,
            config_path=CONFIG_PATH,
            pidfile=PIDFILE,
            log_path=LOG_PATH,
            env=self.env,
            env_pairs=env_pairs(self.env),
            ctl_path=getattr(self, "ctl_path", ""),
        )

    # Each init system is described declaratively (its service file and shell commands) so that
    # provisioning can send files and commands to the host in one round trip.
    template = ""
    service_path = ""
    service_mode = 0o644
    register_cmd = ""
    restart_cmd = ""
    stop_cmd = ""

    def service_file(self):
        """(remote path, content, mode) of the service definition."""
        return self.service_path, templates.render(self.template, **self.context()).encode(), self.service_mode

    def restart(self):
        self.s.run(self.restart_cmd, sudo=True)

    def stop(self):
        self.s.run(self.stop_cmd, sudo=True, check=False)

    def logs(self, lines=30):
        r = self.s.run(f"tail -n {int(lines)} {LOG_PATH} 2>/dev/null", sudo=True, check=False)
        return r.stdout


class Systemd(InitSystem):
    name = "systemd"
    template = "engine.service.j2"
    service_path = "/etc/systemd/system/dockyard-engine.service"
    register_cmd = "systemctl daemon-reload && systemctl enable --no-reload dockyard-engine.service >/dev/null 2>&1"
    restart_cmd = "systemctl restart dockyard-engine.service"
    stop_cmd = "systemctl stop dockyard-engine.service"

    def logs(self, lines=30):
        r = self.s.run(
            f"journalctl -u dockyard-engine.service -n {int(lines)} --no-pager -o cat", sudo=True, check=False
        )
        return r.stdout


class OpenRC(InitSystem):
    name = "openrc"
    template = "engine.openrc.j2"
    service_path = "/etc/init.d/dockyard-engine"
    service_mode = 0o755
    register_cmd = "rc-update add dockyard-engine default >/dev/null 2>&1 || true"
    restart_cmd = "rc-service dockyard-engine restart"
    stop_cmd = "rc-service dockyard-engine stop"


class NoInit(InitSystem):
    """Hosts without an init system (containers, minimal chroots): a daemonizing control script."""

    name = "none"
    template = "engine-ctl.sh.j2"
    ctl_path = service_path = "/usr/local/lib/dockyard/engine-ctl"
    service_mode = 0o755
    register_cmd = "true"
    restart_cmd = f"{ctl_path} restart"
    stop_cmd = f"{ctl_path} stop"


DETECT = (
    "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd; "
    "elif command -v openrc-run >/dev/null 2>&1 || [ -x /sbin/openrc-run ]; then echo openrc; "
    "else echo none; fi"
)
KINDS = {cls.name: cls for cls in (Systemd, OpenRC, NoInit)}


def detect(session):
    return session.run(DETECT).stdout.strip() or "none"


def for_host(kind, session, machine, python, env):
    return KINDS[kind](session, machine, python, env)
