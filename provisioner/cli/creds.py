"""`dockyard creds ls|set|rm`: cloud credentials in the OS keyring (or the opt-in file); never printed."""

import sys

import click

from dockyard.drivers import registry
from dockyard.provisioner.cli.common import info
from dockyard.provisioner.core import credentials
from dockyard.provisioner.core.errors import UsageError

_FILE_OPTION = click.option(
    "--creds-file",
    envvar=credentials.FILE_ENV,
    metavar="PATH",
    help=f"Keep credentials in this file (mode 0600) instead of the OS keyring [env {credentials.FILE_ENV}].",
)


def _fields(provider):
    cls = registry.get(provider)
    fields = getattr(cls, "credential_fields", None)
    if not fields:
        raise UsageError(f'driver "{provider}" takes no stored credentials')
    return fields


def _ref(text):
    provider, account = credentials.split_ref(text)
    if not provider:
        raise UsageError("Error: expected PROVIDER or PROVIDER:ACCOUNT")
    return provider, account, credentials.make_ref(provider, account)


@click.group()
def creds():
    """Manage cloud credentials (kept in the OS keyring; config.json only refers to them)."""


@creds.command("ls")
@_FILE_OPTION
def creds_ls(creds_file):
    """List stored credentials (names and fields, never values)."""
    store = credentials.open_store(creds_file)
    rows = []
    for ref in store.refs():
        values = store.get(ref) or {}
        rows.append((ref, store.kind, ",".join(sorted(values))))
    width = max([len("NAME")] + [len(r[0]) for r in rows])
    info(f"{'NAME'.ljust(width)}   {'BACKEND'.ljust(7)}   FIELDS")
    for ref, kind, fields in rows:
        info(f"{ref.ljust(width)}   {kind.ljust(7)}   {fields}")


@creds.command("set")
@click.argument("ref", metavar="PROVIDER[:ACCOUNT]")
@click.option("--from-env", is_flag=True, help="Take the values from the provider's environment variables.")
@_FILE_OPTION
def creds_set(ref, from_env, creds_file):
    """Store credentials; prompts for each field (input hidden; read from stdin when it is not a terminal)."""
    provider, _account, ref = _ref(ref)
    fields = _fields(provider)
    env_names = [f.envvar for f in fields if f.envvar]
    store = credentials.open_store(creds_file, provider, env_names)
    if from_env:
        values = credentials.from_env(fields)
    else:
        values = {}
        interactive = sys.stdin.isatty()  # piped values are not echoed anyway; getpass would only warn
        for f in fields:
            label = f.name + (f" [{f.envvar}]" if f.envvar else "") + ("" if f.required else " (optional)")
            value = click.prompt(
                label, hide_input=interactive, default="" if not f.required else None, show_default=False, err=True
            )
            if value:
                values[f.name] = value
    lacking = credentials.missing(fields, values)
    if lacking:
        raise UsageError("Error: missing " + ", ".join(f.envvar or f.name for f in lacking))
    store.set(ref, values)
    info(f'Stored "{ref}" in the {store.description}')


@creds.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="PROVIDER[:ACCOUNT]...")
@_FILE_OPTION
def creds_rm(refs, creds_file):
    """Delete stored credentials."""
    store = credentials.open_store(creds_file)
    missing = []
    for text in refs:
        ref = _ref(text)[2]
        if store.delete(ref):
            info(f'Removed "{ref}"')
        else:
            missing.append(ref)
    if missing:
        raise credentials.CredentialsError(f"not stored: {', '.join(missing)}")
