"""Commands that change machines: start, stop, restart, kill, rm, provision, upgrade, regenerate-certs."""

import click

from dockyard.provisioner.cli.common import (
    complete_machines,
    confirm,
    for_each,
    info,
    many_names,
    stdin_is_terminal,
    store_of,
)
from dockyard.provisioner.cli.context import remove_context
from dockyard.provisioner.core.errors import DockyardError, UsageError
from dockyard.provisioner.machines import machine


def _verb(name, method, help_text, after=None):
    @click.command(name, help=help_text)
    @click.argument("names", nargs=-1, shell_complete=complete_machines)
    @click.pass_context
    def command(ctx, names):
        store = store_of(ctx)
        for_each(store, many_names(store, names), lambda m, log: getattr(m, method)(log))
        if after:
            info(after)

    return command


start = _verb(
    "start",
    "start",
    "Start machines.",
    after="Started machines may have new IP addresses; dockyard re-issues server certs when they do.",
)
stop = _verb("stop", "stop", "Stop machines (gracefully).")
kill = _verb("kill", "kill", "Kill machines (power off at once).")
restart = _verb(
    "restart",
    "restart",
    "Restart machines.",
    after="Restarted machines may have new IP addresses; dockyard re-issues server certs when they do.",
)
upgrade = _verb(
    "upgrade", "upgrade", "Upgrade the engine on machines to this dockyard's version (containers keep running)."
)


@click.command()
@click.argument("names", nargs=-1, shell_complete=complete_machines)
@click.pass_context
def provision(ctx, names):
    """Re-run provisioning on machines; keeps containers, images and volumes."""
    store = store_of(ctx)

    def run(m, log):
        if not m.driver.provisions:
            raise DockyardError(f'machine "{m.name}" uses the {m.driver.name} driver, which is not provisioned')
        m.require_running()
        m.provision(log)
        m.set_status("Running")

    for_each(store, many_names(store, names), run)


@click.command("regenerate-certs")
@click.argument("names", nargs=-1, shell_complete=complete_machines)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--client-certs", is_flag=True, help="Also re-issue the client certificate (and the CA if it expires).")
@click.pass_context
def regenerate_certs(ctx, names, force, client_certs):
    """Re-issue TLS certificates and restart the engine; containers, images and volumes are kept."""
    store = store_of(ctx)
    names = many_names(store, names)
    if not force and not confirm("Regenerate TLS machine certs?  Warning: this is irreversible. (y/n): "):
        return
    for_each(store, names, lambda m, log: m.regenerate_certs(log, client_certs=client_certs))


@click.command()
@click.argument("names", nargs=-1, shell_complete=complete_machines)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Remove the local record even if the driver fails to delete the machine; no prompt.",
)
@click.option("-y", "yes", is_flag=True, help="Assume yes to the prompt.")
@click.option(
    "--keep-engine",
    is_flag=True,
    help="generic machines: leave the engine, its service and /etc/dockyard on the host.",
)
@click.pass_context
def rm(ctx, names, force, yes, keep_engine):
    """Remove machines and everything their drivers made.

    A generic machine's host stays, but the engine, its service and /etc/dockyard are taken off it
    (the engine's data and log stay); --keep-engine leaves them."""
    store = store_of(ctx)
    if not names:
        raise UsageError("Error: Expected to get one or more machine names as arguments")
    info(f"About to remove {', '.join(names)}")
    info("WARNING: This action will delete both local reference and remote instance.")
    if not (force or yes) and not confirm("Are you sure? (y/n): "):
        if not stdin_is_terminal():
            # Nobody could answer the prompt: say so and fail, rather than exit 0 having removed nothing.
            raise DockyardError(
                'Not removing anything: stdin is not a terminal and gave no "y"; use -y to remove without asking'
            )
        return
    errors = []
    for n in names:
        try:
            machine.remove(store, n, force, info, keep_engine=keep_engine)
        except DockyardError as e:
            errors.append(str(e))
            if not force:
                continue
        remove_context(n, info)
    if errors and not force:
        raise DockyardError("\n".join(errors))
    for message in errors:
        click.echo(message, err=True)
