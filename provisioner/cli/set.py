"""`dockyard set NAME --cpus/--memory/--disk`: new resources for a stopped machine (the disk only grows)."""

import click

from dockyard.provisioner.cli.common import complete_machines, for_each, store_of


@click.command("set")
@click.argument("name", shell_complete=complete_machines)
@click.option("--cpus", type=int, help="Virtual CPUs.")
@click.option("--memory", type=float, help="Memory in GiB, e.g. 2 or 1.5.")
@click.option("--disk", type=int, help="Disk size in GiB; the disk grows, never shrinks.")
@click.pass_context
def set_resources(ctx, name, cpus, memory, disk):
    """Change a stopped machine's CPUs, memory or disk size (local VM drivers); its file system follows the disk
    on the next start."""
    store = store_of(ctx)
    for_each(store, [name], lambda m, log: m.set_resources(log, cpus=cpus, memory=memory, disk=disk))
