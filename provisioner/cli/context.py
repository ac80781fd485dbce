"""`dockyard use NAME`: a docker context for the machine, so `docker --context` and `docker context use` work."""

import shutil
import subprocess

import click

from dockyard.provisioner.cli.common import complete_machines, load, one_name, store_of
from dockyard.provisioner.core.errors import DockyardError


def _docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True)


def context_name(machine_name):
    return f"dockyard-{machine_name}"


def write_context(m):
    """Create or update the docker context of machine m; returns its name."""
    tls = m.tls_files()
    context = context_name(m.name)
    endpoint = f"host={m.url()},ca={tls.ca},cert={tls.cert},key={tls.key}"
    exists = _docker("context", "inspect", context).returncode == 0
    verb = "update" if exists else "create"
    r = _docker("context", verb, context, "--description", f"dockyard machine {m.name}", "--docker", endpoint)
    if r.returncode != 0:
        raise DockyardError(f"docker context {verb} {context} failed: {r.stderr.strip()}")
    return context


def context_after_create(m, log):
    """create's docker context, when the docker CLI is installed (a failure is a warning: the machine works)."""
    if shutil.which("docker") is None or not m.driver.provisions:
        return
    try:
        context = write_context(m)
    except (DockyardError, OSError) as e:
        log(f"Warning: no docker context for {m.name}: {e}")
        return
    log(f'Docker context "{context}" created: docker --context {context} ..., or dockyard use {m.name}')


def remove_context(machine_name, log):
    """rm's part: the machine's docker context goes with it (if the docker CLI and the context are there)."""
    context = context_name(machine_name)
    if shutil.which("docker") is None or _docker("context", "inspect", context).returncode != 0:
        return
    r = _docker("context", "rm", "-f", context)
    if r.returncode != 0:
        log(f"Warning: docker context rm {context} failed: {r.stderr.strip()}")
    else:
        log(f'Removed docker context "{context}"')


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
    context = write_context(m)
    if not no_switch:
        r = _docker("context", "use", context)
        if r.returncode != 0:
            raise DockyardError(f"docker context use {context} failed: {r.stderr.strip()}")
    click.echo(f"Active machine: {m.name} (docker context {context})")
