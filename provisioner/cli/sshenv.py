"""`dockyard env --ssh`: DOCKER_HOST=ssh://user@ip:port and the per-machine ssh config that makes it work.

The docker CLI runs the `ssh` on PATH as `ssh -o ConnectTimeout=30 -T -l USER -p PORT -- IP docker system
dial-stdio` and offers no way to pass it a key or a known_hosts file: only the user's ssh configuration
reaches it. So dockyard writes `machines/NAME/ssh_config`, a `Match` block for exactly that user, address and
port with the machine's key and pinned host key (the same options `dockyard ssh` passes on the command
line), and tells the user the one `Include` line that makes ssh read these files; ~/.ssh is never written.
"""

from __future__ import annotations

import os

from dockyard.provisioner.core.files import atomic_write
from dockyard.provisioner.core.ssh_target import SSHTarget

__all__ = ["SSH_CONFIG_NAME", "ssh_url", "ssh_config_text", "write_ssh_config", "include_line"]

SSH_CONFIG_NAME = "ssh_config"

# Options of the system-ssh argv that belong to one invocation, not to a host's configuration.
_SKIP_OPTIONS = ("ControlMaster", "ControlPath", "ConnectTimeout", "ConnectionAttempts", "LogLevel")


def ssh_url(target: SSHTarget) -> str:
    """ssh://user@host:port as the docker CLI parses it (an IPv6 address in brackets)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"ssh://{target.user}@{host}:{target.port}"


def _config_value(value: str) -> str:
    # ssh_config splits on spaces unless the value is double-quoted; % starts a token in paths.
    if value.startswith('"') and value.endswith('"'):
        return value
    return f'"{value}"' if any(c.isspace() for c in value) else value


def ssh_config_text(machine: str, target: SSHTarget, ssh_argv: list[str]) -> str:
    """An ssh_config Match block for target carrying the options of ssh_argv (the argv `dockyard ssh`
    runs: -o KEY=VALUE pairs and -i KEY); the block applies to this user, address and port only."""
    lines = []
    i = 1
    while i < len(ssh_argv):
        arg = ssh_argv[i]
        if arg == "-o" and i + 1 < len(ssh_argv):
            key, _, value = ssh_argv[i + 1].partition("=")
            if key not in _SKIP_OPTIONS:
                lines.append(f"\t{key} {_config_value(value)}")
            i += 2
        elif arg == "-i" and i + 1 < len(ssh_argv):
            lines.append(f"\tIdentityFile {_config_value(ssh_argv[i + 1].replace('%', '%%'))}")
            i += 2
        elif arg in ("-F", "-p") and i + 1 < len(ssh_argv):
            i += 2
        else:
            i += 1
    return (
        f"# Written by `dockyard env --ssh {machine}`; rewritten each time it runs.\n"
        f"# DOCKER_HOST={ssh_url(target)} logs in with machine {machine}'s key and pinned host key.\n"
        f'Match host "{target.host}" user "{target.user}" exec "test %p = {int(target.port)}"\n'
        + "\n".join(lines)
        + "\n"
    )


def write_ssh_config(machine_dir: str, text: str) -> str:
    """Write the machine's ssh_config (0600, atomic) and return its path."""
    path = os.path.join(machine_dir, SSH_CONFIG_NAME)
    atomic_write(path, text, 0o600, durable=False)
    return path


def include_line(machines_dir: str) -> str:
    """The one line for the top of ~/.ssh/config that makes ssh read every machine's ssh_config."""
    pattern = os.path.join(machines_dir, "*", SSH_CONFIG_NAME)
    return f'Include "{pattern}"' if any(c.isspace() for c in pattern) else f"Include {pattern}"
