"""argv for the system ssh and scp binaries, with the machine's pinned host key enforced.

Building an argv never connects: a machine never contacted has no pinned key yet, and the caller pins it
first with ssh.pin_host_key (a login, as a session does).
"""

from __future__ import annotations

from dockyard.provisioner.core.errors import SSHError
from dockyard.provisioner.core.files import atomic_write
from dockyard.provisioner.core.ssh_keys import check_key_permissions, read_pinned_host_key
from dockyard.provisioner.core.ssh_target import SSHTarget


def _option_path(path: str) -> str:
    # ssh expands %-tokens in these options and splits them on spaces unless quoted.
    path = path.replace("%", "%%")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def _host_key_options(target: SSHTarget) -> list[str]:
    if not target.host_key_path:
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    key = read_pinned_host_key(target.host_key_path)
    if key is None:
        raise SSHError(f"the host key of {target.describe()} is not pinned yet: connect once to pin it")
    # The alias names the machine, not host:port, so the pin follows the machine across address changes.
    alias = f"dockyard.{target.machine}" if target.machine else target.host
    known_hosts = target.host_key_path + ".known_hosts"
    line = f"{alias} {key.get_name()} {key.get_base64()}\n".encode()
    try:
        with open(known_hosts, "rb") as f:
            current = f.read()
    except OSError:
        current = None
    if current != line:  # derived from the pin and rewritten whenever it differs: no fsync needed
        atomic_write(known_hosts, line, 0o600, durable=False)
    return [
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={_option_path(known_hosts)}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"HostKeyAlias={alias}",
        "-o",
        "CheckHostIP=no",
        "-o",
        "UpdateHostKeys=no",
    ]


def _common_options(target: SSHTarget) -> list[str]:
    opts = [
        "-F",
        "/dev/null",
        "-o",
        "ConnectionAttempts=3",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "LogLevel=ERROR",  # ERROR, not QUIET: a changed host key must be seen
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        "ServerAliveInterval=60",
    ] + _host_key_options(target)
    if target.key_path:
        check_key_permissions(target.key_path)
        opts += ["-o", "IdentitiesOnly=yes", "-i", target.key_path]
    return opts


def system_ssh_argv(target: SSHTarget, args: list[str], tty: bool | None = None, *, ssh: str = "ssh") -> list[str]:
    """argv for the system ssh (Docker Machine's external client) with the pinned host key enforced.
    tty: True adds -t, False adds -T, None lets ssh decide. args follow user@host unchanged."""
    argv = [ssh] + _common_options(target) + ["-p", str(target.port)]
    if tty is not None:
        argv.append("-t" if tty else "-T")
    return argv + [f"{target.user}@{target.host}"] + list(args)


def system_scp_argv(
    target: SSHTarget,
    sources: list[str],
    dest: str,
    *,
    to_remote: bool,
    recursive: bool = False,
    quiet: bool = False,
    scp: str = "scp",
) -> list[str]:
    """argv for the system scp between this computer and one machine: local sources to the remote dest
    (to_remote=True) or remote sources to a local dest."""
    host = f"[{target.host}]" if ":" in target.host else target.host

    def remote(path: str) -> str:
        return f"{target.user}@{host}:{path}"

    argv = [scp] + _common_options(target) + ["-P", str(target.port)]
    argv += (["-r"] if recursive else []) + (["-q"] if quiet else [])
    if to_remote:
        return argv + ["--"] + list(sources) + [remote(dest)]
    return argv + ["--"] + [remote(s) for s in sources] + [dest]
