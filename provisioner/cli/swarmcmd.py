"""`dockyard swarm join|leave`: swarm membership of machines made earlier with --engine docker."""

import click

from dockyard.provisioner.cli.common import complete_machines, info, load, store_of
from dockyard.provisioner.machines import cluster


@click.group("swarm")
def swarm():
    """Swarm mode membership of existing --engine docker machines."""


@swarm.command("join")
@click.argument("name", shell_complete=complete_machines)
@click.option("--to", "manager", required=True, metavar="MANAGER", help="A manager of the swarm to join.")
@click.option("--manager", "as_manager", is_flag=True, help="Join as a manager instead of a worker.")
@click.option("--swarm-join-opt", multiple=True, help="swarm join option KEY=VALUE (repeatable).")
@click.pass_context
def join(ctx, name, manager, as_manager, swarm_join_opt):
    """Make machine NAME join the swarm that MANAGER manages (dockerd is reconfigured without live-restore)."""
    store = store_of(ctx)
    cluster.join_existing(load(store, name), manager, as_manager, swarm_join_opt, lambda n: load(store, n), info)


@swarm.command("leave")
@click.argument("name", shell_complete=complete_machines)
@click.option("-f", "--force", is_flag=True, help="Leave even as the last manager or without quorum.")
@click.pass_context
def leave(ctx, name, force):
    """Drain machine NAME, make it leave its swarm and remove it from the manager's node list."""
    store = store_of(ctx)
    cluster.leave_existing(load(store, name), store.names(), lambda n: load(store, n), force, info)
