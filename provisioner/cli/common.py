"""Helpers shared by the CLI commands: machine lookup (the "default" rule), logging, fan-out."""

import sys
import threading

import click

from dockyard.drivers import registry
from dockyard.provisioner.cli.filters import FILTER_KEYS
from dockyard.provisioner.cli.group import GlobalOptions
from dockyard.provisioner.cli.shells import SHELLS
from dockyard.provisioner.core.errors import DockyardError, MachineNotExist, UsageError
from dockyard.provisioner.core.store import Store, default_store_path
from dockyard.provisioner.machines.machine import Machine


def options_of(ctx: click.Context) -> GlobalOptions:
    """The global options (--storage-path, --debug, --native-ssh) of this invocation."""
    return ctx.find_root().obj


def store_of(ctx: click.Context) -> Store:
    return options_of(ctx).store


def info(msg):
    """Progress lines go to stdout, as Docker Machine's do."""
    click.echo(msg)


def info_err(msg):
    """For commands whose stdout is eval'ed (env, config)."""
    click.echo(msg, err=True)


def one_name(store, names):
    """Docker Machine's rule: no name means the machine called "default", if it exists."""
    if len(names) > 1:
        raise UsageError("Error: Expected one machine name as an argument")
    if names:
        return names[0]
    if store.exists("default"):
        return "default"
    raise UsageError('Error: No machine name(s) specified and no "default" machine exists')


def many_names(store, names):
    if names:
        return list(names)
    if store.exists("default"):
        return ["default"]
    raise UsageError('Error: No machine name(s) specified and no "default" machine exists')


def load(store, name):
    if not store.exists(name):
        raise MachineNotExist(name)
    return Machine.load(store, name)


def for_each(store, names, action, log=info, limit=8):
    """Run action(machine, log) on each machine concurrently (bounded); errors are joined, exit 1."""
    machines = [load(store, n) for n in names]  # all must load before anything runs
    errors = {}
    sem = threading.Semaphore(limit)
    lock = threading.Lock()

    def run(m):
        with sem:
            try:
                with store.machine_lock(m.name):
                    action(m, log)
            except DockyardError as e:
                with lock:
                    errors[m.name] = str(e)
            except Exception as e:  # keep the other machines going; report this one
                with lock:
                    errors[m.name] = f"{type(e).__name__}: {e}"

    if len(machines) == 1:
        run(machines[0])
    else:
        threads = [threading.Thread(target=run, args=(m,)) for m in machines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        if len(machines) == 1:
            raise DockyardError(next(iter(errors.values())))
        raise DockyardError("\n".join(f"{n}: {e}" for n, e in sorted(errors.items())))


def stdin_is_terminal() -> bool:
    try:
        return bool(sys.stdin) and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


def confirm(prompt):
    """A y/n prompt; a reply starting with y is yes. Without a tty the reply is read from stdin (EOF means no)."""
    if not stdin_is_terminal():
        try:
            click.echo(prompt, nl=False)
            reply = sys.stdin.readline()
        except Exception:
            return False
    else:
        reply = click.prompt(prompt.rstrip(), default="", show_default=False, prompt_suffix=" ")
    return reply.strip().lower().startswith("y")


def complete_machines(ctx, param, incomplete):
    """Shell completion of machine names from the store."""
    root = ctx.find_root()
    path = root.params.get("storage_path") or default_store_path()
    return [n for n in sorted(Store(path).names()) if n.startswith(incomplete)]


def complete_drivers(ctx, param, incomplete):
    """Shell completion of driver names (built-ins available here and the dockyard.drivers entry points)."""
    return [n for n in registry.names() if n.startswith(incomplete)]


def complete_shells(ctx, param, incomplete):
    """Shell completion of env --shell values."""
    return [s for s in SHELLS if s.startswith(incomplete)]


def complete_filters(ctx, param, incomplete):
    """Shell completion of ls --filter keys (as KEY=)."""
    return [f"{k}=" for k in FILTER_KEYS if f"{k}=".startswith(incomplete)]
