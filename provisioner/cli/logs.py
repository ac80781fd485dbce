"""`dockyard logs`: the engine's log from the host, or the VM's serial console log of a local machine; with
--follow, what comes after too, until Ctrl-C (as `tail -F`)."""

import os
import sys
import time
from collections.abc import Callable

import click

from dockyard.provisioner.cli.common import complete_machines, load, one_name, store_of
from dockyard.provisioner.core.errors import DockyardError

ALL_LINES = 1_000_000
"""What -n 0 asks of journalctl/tail on the host: the whole log, within reason."""


def tail_file(path: str, lines: int) -> str:
    """The last `lines` lines of a local file (0: all of it); bytes that are not UTF-8 are replaced."""
    with open(path, "rb") as f:
        return last_lines(f.read(), lines)


def last_lines(data: bytes, lines: int) -> str:
    text = data.decode("utf-8", "replace")
    if lines <= 0:
        return text
    return "".join(text.splitlines(keepends=True)[-lines:])


POLL = 0.2
"""Seconds between looks at a followed local file."""


def follow_file(path: str, lines: int, write: Callable[[bytes], None], stop: Callable[[], bool] = lambda: False):
    """Write the last `lines` lines of a local file, then whatever is appended, until stop() (or Ctrl-C).
    Followed by name, as tail -F: a file replaced (each VM boot starts a new serial log) or truncated is read
    again from its start; one that is missing for a while is waited for."""
    f, inode, first = None, None, True
    try:
        while not stop():
            if f is None:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    time.sleep(POLL)
                    continue
                inode = os.fstat(f.fileno()).st_ino
                if first:  # later files (the next boot's) are shown from their start
                    write(last_lines(f.read(), lines).encode())
                    first = False
            chunk = f.read(65536)
            if chunk:
                write(chunk)
                continue
            try:
                st = os.stat(path)
                replaced = st.st_ino != inode or st.st_size < f.tell()
            except FileNotFoundError:
                replaced = True
            if replaced:
                f.close()
                f = None
                continue
            time.sleep(POLL)
    finally:
        if f is not None:
            f.close()


def _stdout_write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


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
@click.option("-f", "--follow", is_flag=True, help="Keep showing new lines as they come, until Ctrl-C.")
@click.pass_context
def logs(ctx, name, lines, serial, follow):
    """Show the engine's log on a machine (over SSH), or with --serial the VM's serial console log.

    The engine's log comes from the host's journal (journalctl -u dockyard-engine, or docker.service for
    --engine docker machines) or, on hosts without an init system, from the engine's log file. The machine
    must be running. --serial reads the console log the local drivers keep in the machine's directory.
    --follow keeps the log open, as tail -f, until Ctrl-C.
    """
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    if serial:
        path = m.serial_log_path()
        if path is None:
            raise DockyardError(
                f'machine "{m.name}" has no serial console log: only local VMs (qemu, virtualbox) keep one'
            )
        if follow:
            _until_interrupted(lambda: follow_file(path, lines, _stdout_write))
            return
        text = tail_file(path, lines)
    elif follow:
        _until_interrupted(lambda: m.follow_engine_log(lines or ALL_LINES))
        return
    else:
        text = m.engine_log(lines or ALL_LINES)
    click.echo(text, nl=bool(text) and not text.endswith("\n"))
    if not text:
        click.echo(f"(the {'serial console' if serial else 'engine'} log of {m.name} is empty)", err=True)


def _until_interrupted(follow: Callable[[], object]) -> None:
    """Run a follower; Ctrl-C ends it as it ends tail -f (exit status 130, no traceback)."""
    try:
        follow()
    except KeyboardInterrupt:
        sys.exit(130)
