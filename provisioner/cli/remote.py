"""Commands that reach into machines: ssh and scp."""

import os
import posixpath
import shlex
import shutil
import sys
import tempfile

import click

from dockyard.provisioner.cli.common import complete_machines, load, options_of, store_of
from dockyard.provisioner.core.errors import UsageError


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, shell_complete=complete_machines)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def ssh(ctx, name, command):
    """Log into a machine or run a command on it; the remote exit code is passed through.

    Use `dockyard ssh NAME -- CMD ARGS...` to run a command.
    """
    store = store_of(ctx)
    if not name:
        if store.exists("default"):
            name = "default"
        else:
            raise UsageError('Error: No machine name(s) specified and no "default" machine exists')
    m = load(store, name)
    if m.state().value != "Running":
        raise UsageError(f'Error: Cannot run SSH command: Host "{name}" is not running')
    if not m.driver.provisions:
        raise UsageError(f'machine "{name}" uses the {m.driver.name} driver, which has no SSH access')
    # Lazy: paramiko (under ssh and ssh_system) is slow to import, and only ssh and scp need it.
    from dockyard.provisioner.core.ssh import SSHSession, pin_host_key
    from dockyard.provisioner.core.ssh_system import system_ssh_argv

    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    target = m.ssh_target()
    native = options_of(ctx).native_ssh or shutil.which("ssh") is None
    if not native:
        pin_host_key(target)  # a machine never contacted: log in once so ssh can check the key
        argv = system_ssh_argv(target, args, tty=None if args else True)
        sys.stdout.flush()
        os.execvp(argv[0], argv)
    with SSHSession(target) as s:
        if args:
            rc = s.exec_stream(" ".join(args))
        else:
            rc = s.interactive()
    sys.exit(rc)


def _split_spec(spec):
    """'NAME:path' -> (NAME, path); a plain or absolute path, './x' or 'localhost:x' -> (None, path)."""
    if ":" in spec and not spec.startswith(("/", ".")):
        host, _, path = spec.partition(":")
        if "@" in host:
            host = host.split("@", 1)[1]
        if host and host != "localhost":
            return host, path or "."
        return None, path
    return None, spec


@click.command()
@click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing.")
@click.argument("source")
@click.argument("destination")
@click.pass_context
def scp(ctx, recursive, quiet, source, destination):
    """Copy files between the local machine and machines: [NAME:]SRC [NAME:]DST."""
    store = store_of(ctx)
    src_host, src_path = _split_spec(source)
    dst_host, dst_path = _split_spec(destination)
    if src_host is None and dst_host is None:
        raise UsageError("Error: neither the source nor the destination names a machine (use NAME:PATH)")

    from dockyard.provisioner.core.ssh import SSHSession  # lazy: paramiko is slow to import

    def session(name):
        m = load(store, name)
        if m.state().value != "Running":
            raise UsageError(f'Error: Host "{name}" is not running')
        return SSHSession(m.ssh_target())

    if src_host and dst_host:
        # Machine to machine: through a local temp dir, like scp -3.
        with tempfile.TemporaryDirectory(prefix="dockyard-scp-") as tmp:
            local = os.path.join(tmp, posixpath.basename(src_path.rstrip("/")) or "data")
            with session(src_host) as s:
                _get(s, src_path, local, recursive)
            with session(dst_host) as s:
                _put(s, local, dst_path, recursive)
    elif src_host:
        with session(src_host) as s:
            _get(s, src_path, dst_path, recursive)
    else:
        if not os.path.exists(src_path):
            raise UsageError(f"Error: {src_path}: no such file or directory")
        with session(dst_host) as s:
            _put(s, src_path, dst_path, recursive)
    if not quiet:
        click.echo(f"Copied {source} to {destination}", err=True)


def _remote_is_dir(s, path):
    return s.run(f"test -d {shlex.quote(path)}", check=False).exit_status == 0


def _get(s, remote, local, recursive):
    if _remote_is_dir(s, remote):
        if not recursive:
            raise UsageError(f"Error: {remote} is a directory (use -r)")
        if os.path.isdir(local):
            local = os.path.join(local, posixpath.basename(remote.rstrip("/")))
        s.get_tree(remote, local)
        return
    if os.path.isdir(local):
        local = os.path.join(local, posixpath.basename(remote))
    s.get_file(remote, local)


def _put(s, local, remote, recursive):
    if os.path.isdir(local):
        if not recursive:
            raise UsageError(f"Error: {local} is a directory (use -r)")
        if _remote_is_dir(s, remote):
            remote = posixpath.join(remote, os.path.basename(local.rstrip("/")))
        s.put_tree(local, remote)
        return
    if _remote_is_dir(s, remote):
        remote = posixpath.join(remote, os.path.basename(local))
    s.put_file(local, remote)
