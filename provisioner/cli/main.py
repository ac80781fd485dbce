"""The `dockyard` CLI assembled: the group with every command, and the entry point with Docker Machine's exit codes."""

import sys

import click

from dockyard.provisioner.cli import completion, context, create, creds, lifecycle, logs, prune, query, remote, swarmcmd
from dockyard.provisioner.cli import set as set_command
from dockyard.provisioner.cli.group import cli

for command in (
    context.use,
    create.create,
    creds.creds,
    lifecycle.start,
    lifecycle.stop,
    lifecycle.kill,
    lifecycle.restart,
    lifecycle.upgrade,
    lifecycle.provision,
    lifecycle.regenerate_certs,
    lifecycle.rm,
    set_command.set_resources,
    query.ls,
    query.env,
    query.config,
    query.inspect,
    query.ip,
    query.url,
    query.status,
    query.active,
    query.version,
    remote.ssh,
    remote.scp,
    logs.logs,
    swarmcmd.swarm,
    completion.completion,
    prune.prune,
):
    cli.add_command(command)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="dockyard", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as e:
        # Docker Machine exits 1 on usage errors too; scripts depend on it.
        e.show()
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
