"""The `dockyard` command group: global options, error handling and exit codes (commands are added by main)."""

import os
import sys
import traceback

import click

from dockyard import __version__
from dockyard.provisioner.core.errors import DockyardError
from dockyard.provisioner.core.store import Store, default_store_path


class GlobalOptions:
    """The global options of one invocation, shared by every command (click's ctx.obj)."""

    def __init__(self, storage_path: str, debug: bool, native_ssh: bool) -> None:
        self.store = Store(storage_path)
        self.debug = debug
        self.native_ssh = native_ssh


class DockyardGroup(click.Group):
    """Turns every DockyardError into one line on stderr and its exit code; --debug shows the trace."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DockyardError as e:
            if _debug_requested(ctx):
                traceback.print_exc()
            click.echo(str(e), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            sys.exit(130)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            if args and not args[0].startswith("-"):
                click.echo(f"dockyard: '{args[0]}' is not a dockyard command. See 'dockyard --help'.", err=True)
                sys.exit(1)
            raise


def _debug_requested(ctx):
    obj = ctx.find_object(GlobalOptions)
    return bool(obj and obj.debug) or os.environ.get("DOCKYARD_DEBUG", "") not in ("", "0", "false")


@click.group(cls=DockyardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-s",
    "--storage-path",
    envvar="DOCKYARD_STORAGE_PATH",
    default=default_store_path,
    show_default="~/.dockyard",
    help="Where machines, certs and caches are kept.",
)
@click.option("-D", "--debug", is_flag=True, envvar="DOCKYARD_DEBUG", help="Show tracebacks and debug output.")
@click.option(
    "--native-ssh",
    is_flag=True,
    envvar="DOCKYARD_NATIVE_SSH",
    help="Use the built-in SSH client (paramiko) instead of the system ssh binary.",
)
@click.version_option(__version__, "-v", "--version", prog_name="dockyard", message="%(prog)s version %(version)s")
@click.pass_context
def cli(ctx, storage_path, debug, native_ssh):
    """Create and manage hosts that run the dockyard container engine."""
    ctx.obj = GlobalOptions(storage_path, debug, native_ssh)
