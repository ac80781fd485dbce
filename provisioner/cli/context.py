"""`dockyard use NAME`: a docker context for the machine, so `docker --context` and `docker context use` work."""

import shutil
import subprocess

import click

from dockyard.provisioner.cli.common import complete_machines, load, one_name, store_of
from dockyard.provisioner.core.errors import DockyardError


def _docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True)


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.option("--no-switch", is_flag=True, help="Create or update the context but do not make it current.")
@click.pass_context
def use(ctx, name, no_switch):
    """Create or update the docker context "dockyard-NAME" for a machine and switch to it."""
    if shutil.which("docker") is None:
        raise DockyardError("the docker CLI is not installed: dockyard use needs it to manage contexts")
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    tls = m.tls_files()
    context = f"dockyard-{m.name}"
    endpoint = f"host={m.url()},ca={tls.ca},cert={tls.cert},key={tls.key}"
    exists = _docker("context", "inspect", context).returncode == 0
    verb = "update" if exists else "create"
    r = _docker("context", verb, context, "--description", f"dockyard machine {m.name}", "--docker", endpoint)
    if r.returncode != 0:
        raise DockyardError(f"docker context {verb} {context} failed: {r.stderr.strip()}")
    if not no_switch:
        r = _docker("context", "use", context)
        if r.returncode != 0:
            raise DockyardError(f"docker context use {context} failed: {r.stderr.strip()}")
    click.echo(f"Active machine: {m.name} (docker context {context})")
