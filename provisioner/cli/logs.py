"""`dockyard logs`: the engine's log from the host, or the VM's serial console log of a local machine."""

import click

from dockyard.provisioner.cli.common import complete_machines, load, one_name, store_of
from dockyard.provisioner.core.errors import DockyardError

ALL_LINES = 1_000_000
"""What -n 0 asks of journalctl/tail on the host: the whole log, within reason."""


def tail_file(path: str, lines: int) -> str:
    """The last `lines` lines of a local file (0: all of it); bytes that are not UTF-8 are replaced."""
    with open(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8", "replace")
    if lines <= 0:
        return text
    return "".join(text.splitlines(keepends=True)[-lines:])


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.option(
    "-n",
    "--tail",
    "lines",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="How many of the last lines to show (0: all).",
)
@click.option(
    "--serial",
    is_flag=True,
    help="Show the VM's serial console log (local drivers: qemu, virtualbox) instead of the engine's; "
    "works on a stopped machine, which is when it helps most.",
)
@click.pass_context
def logs(ctx, name, lines, serial):
    """Show the engine's log on a machine (over SSH), or with --serial the VM's serial console log.

    The engine's log comes from the host's journal (journalctl -u dockyard-engine, or docker.service for
    --engine docker machines) or, on hosts without an init system, from the engine's log file. The machine
    must be running. --serial reads the console log the local drivers keep in the machine's directory.
    """
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    if serial:
        path = m.serial_log_path()
        if path is None:
            raise DockyardError(
                f'machine "{m.name}" has no serial console log: only local VMs (qemu, virtualbox) keep one'
            )
        text = tail_file(path, lines)
    else:
        text = m.engine_log(lines or ALL_LINES)
    click.echo(text, nl=bool(text) and not text.endswith("\n"))
    if not text:
        click.echo(f"(the {'serial console' if serial else 'engine'} log of {m.name} is empty)", err=True)
