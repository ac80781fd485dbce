"""The engine's service on the host, one class per init system: systemd, OpenRC, or none (a daemon script)."""

import abc

import templates

from .. import __version__
from ..errors import ProvisionError

BUNDLE_PATH = "/usr/local/lib/dockyard/dockyard-engine.pyz"
CONFIG_DIR = "/etc/dockyard"
CONFIG_PATH = CONFIG_DIR + "/engine.json"
PIDFILE = "/run/dockyard/engine.pid"
LOG_PATH = "/var/log/dockyard-engine.log"


def _env_pairs(env):
    pairs = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProvisionError(f'invalid --engine-env "{item}": expected KEY=VALUE')
        pairs.append((key, value))
    return pairs


class InitSystem(abc.ABC):
    name = "base"

    def __init__(self, session, machine, python, env):
        self.s = session
        self.machine = machine
        self.python = python
        self.env = list(env)

    def context(self):
        return dict(
            dockyard_version=__version__, machine=self.machine, python=self.python,
            bundle_path=BUNDLE_PATH, config_path=CONFIG_PATH, pidfile=PIDFILE, log_path=LOG_PATH,
            env=self.env, env_pairs=_env_pairs(self.env), ctl_path=getattr(self, "ctl_path", ""),
        )

    @abc.abstractmethod
    def install(self):
        """Write the service definition onto the host."""

    @abc.abstractmethod
    def restart(self):
        """(Re)start the engine."""

    @abc.abstractmethod
    def stop(self):
        """Stop the engine; running containers are left alone."""

    def logs(self, lines=30):
        r = self.s.run(f"tail -n {int(lines)} {LOG_PATH} 2>/dev/null", sudo=True, check=False)
        return r.stdout


class Systemd(InitSystem):
    name = "systemd"
    unit_path = "/etc/systemd/system/dockyard-engine.service"

    def install(self):
        self.s.put_bytes(templates.render("engine.service.j2", **self.context()).encode(), self.unit_path,
                         mode=0o644, sudo=True)
        self.s.run("systemctl daemon-reload && systemctl enable dockyard-engine.service >/dev/null 2>&1",
                   sudo=True)

    def restart(self):
        self.s.run("systemctl restart dockyard-engine.service", sudo=True)

    def stop(self):
        self.s.run("systemctl stop dockyard-engine.service", sudo=True, check=False)

    def logs(self, lines=30):
        r = self.s.run(f"journalctl -u dockyard-engine.service -n {int(lines)} --no-pager -o cat", sudo=True,
                       check=False)
        return r.stdout


class OpenRC(InitSystem):
    name = "openrc"
    script_path = "/etc/init.d/dockyard-engine"

    def install(self):
        self.s.put_bytes(templates.render("engine.openrc.j2", **self.context()).encode(), self.script_path,
                         mode=0o755, sudo=True)
        self.s.run("rc-update add dockyard-engine default >/dev/null 2>&1 || true", sudo=True)

    def restart(self):
        self.s.run("rc-service dockyard-engine restart", sudo=True)

    def stop(self):
        self.s.run("rc-service dockyard-engine stop", sudo=True, check=False)


class NoInit(InitSystem):
    """Hosts without an init system (containers, minimal chroots): a daemonizing control script."""

    name = "none"
    ctl_path = "/usr/local/lib/dockyard/engine-ctl"

    def install(self):
        self.s.put_bytes(templates.render("engine-ctl.sh.j2", **self.context()).encode(), self.ctl_path,
                         mode=0o755, sudo=True)

    def restart(self):
        self.s.run(f"{self.ctl_path} restart", sudo=True)

    def stop(self):
        self.s.run(f"{self.ctl_path} stop", sudo=True, check=False)


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
