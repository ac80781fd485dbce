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

    def log_command(self, lines=30, follow=False):
        """The shell command that prints the engine's last lines (and, with follow, the ones to come)."""
        return f"tail -n {int(lines)} -F {LOG_PATH}" if follow else f"tail -n {int(lines)} {LOG_PATH} 2>/dev/null"

    def logs(self, lines=30):
        return self.s.run(self.log_command(lines), sudo=True, check=False).stdout


class Systemd(InitSystem):
    name = "systemd"
    template = "engine.service.j2"
    service_path = "/etc/systemd/system/dockyard-engine.service"
    # daemon-reload re-runs every generator (~4 s in a VM under emulation): only when systemd holds an older copy of
    # the unit (NeedDaemonReload) or has not found it yet; a unit file it never loaded is read on first use.
    register_cmd = (
        "{ st=$(systemctl show -p LoadState -p NeedDaemonReload dockyard-engine.service 2>/dev/null); "
        'case "$st" in *LoadState=loaded*NeedDaemonReload=no*|*NeedDaemonReload=no*LoadState=loaded*) ;; '
        "*) systemctl daemon-reload;; esac; } && "
        "systemctl enable --no-reload dockyard-engine.service >/dev/null 2>&1"
    )
    restart_cmd = "systemctl restart dockyard-engine.service"
    stop_cmd = "systemctl stop dockyard-engine.service"
    # first boot (cloud-init's bootcmd, before the boot reaches network-online.target): queue the start, never wait
    first_boot_cmd = (
        "systemctl enable --no-reload dockyard-engine.service >/dev/null 2>&1 && "
        "systemctl start --no-block dockyard-engine.service"
    )
    # prints "yes" when the service is enabled and running, or about to start (a first boot queued it)
    running_check = (
        "if systemctl is-enabled --quiet dockyard-engine.service 2>/dev/null && "
        "{ systemctl is-active --quiet dockyard-engine.service || "
        "systemctl list-jobs --no-legend dockyard-engine.service 2>/dev/null | grep -q start; }; then echo yes; fi"
    )

    def log_command(self, lines=30, follow=False):
        return f"journalctl -u dockyard-engine.service -n {int(lines)} --no-pager -o cat" + (" -f" if follow else "")


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
