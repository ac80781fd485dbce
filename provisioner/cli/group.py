"""The `dockyard` command group: global options, error handling and exit codes (commands are added by main)."""

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable

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


class DebugFormatter(logging.Formatter):
    """`[+1.234s] ssh 192.0.2.10:22: ...`: seconds since the command started, then the record."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        return f"[+{time.monotonic() - self.started:.3f}s] {record.getMessage()}"


class StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when the record is made (click and tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def enable_debug_log() -> Callable[[], None]:
    """-D: dockyard's debug records (SSH commands, driver calls, engine API calls, with timing) go to stderr.
    Only the "dockyard" loggers: paramiko's own records stay off. Returns what undoes it."""
    logger = logging.getLogger("dockyard")
    handler = StderrHandler()
    handler.setFormatter(DebugFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def disable() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return disable


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
@click.option(
    "-D",
    "--debug",
    is_flag=True,
    envvar="DOCKYARD_DEBUG",
    help="Show tracebacks, and every SSH command, driver call and engine API call with its time, on stderr.",
)
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
    if debug:
        ctx.call_on_close(enable_debug_log())
