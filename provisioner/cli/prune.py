"""`dockyard prune`: remove the guest images in the store's cache that no machine is based on."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import click

from dockyard.provisioner.cli.common import store_of
from dockyard.provisioner.core.errors import DockyardError
from dockyard.provisioner.core.store import Store

IMAGE_DISK = "disk.qcow2"
"""What marks a directory of the image cache as one image: the built image, a Debian cloud image or a user's
image (drivers/guestimage: cache/images/NAME-HASH, images/debian/sha512-*, images/user/{url,file}-*)."""


def image_entries(root: str, depth: int = 2) -> list[str]:
    """The image directories under root (at most `depth` levels down); links and other files are left alone."""
    found: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return found
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        if os.path.exists(os.path.join(path, IMAGE_DISK)):
            found.append(path)
        elif depth > 1:
            found.extend(image_entries(path, depth - 1))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def used_paths(store: Store) -> set[str]:
    """Every path the machines' driver settings name (BaseImage disk, kernel, initrd, ...), absolute.
    A machine whose config cannot be read, or whose create is still running, may use any image: refuse."""
    paths = set()
    for name in store.names():
        try:
            config = store.load(name)
        except DockyardError as e:
            raise DockyardError(
                f'not pruning: cannot tell which image machine "{name}" uses ({e}); a create may be running, '
                f"or remove it with dockyard rm -f {name}"
            ) from None
        status = config.get("Status") or {}
        if status.get("State") == "Creating" and pid_alive(status.get("Pid")):
            raise DockyardError(f'not pruning: machine "{name}" is being created')
        for s in _strings(config.get("Driver") or {}):
            if s:
                paths.add(os.path.realpath(store.abs(s)))
    return paths


def pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return pid not in (None, "", 0)


def unused_images(store: Store) -> list[str]:
    used = used_paths(store)
    unused = []
    for entry in image_entries(os.path.join(store.cache_dir, "images")):
        real = os.path.realpath(entry)
        if not any(p == real or p.startswith(real + os.sep) for p in used):
            unused.append(entry)
    return unused


def tree_size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def human(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
def prune(ctx, dry_run):
    """Remove cached guest images that no machine uses (from the store's cache/images).

    An image a machine's disk is based on is kept. The next create that needs a removed image downloads
    or builds it again. A shared cache set with $DOCKYARD_IMAGE_CACHE is not touched: machines of other
    stores may use it.
    """
    store = store_of(ctx)
    with store.lock():  # rm takes it too; a create in progress is refused by used_paths
        unused = unused_images(store)
        total = 0
        for entry in unused:
            size = tree_size(entry)
            total += size
            click.echo(f"{'Would remove' if dry_run else 'Removing'} {entry} ({human(size)})")
            if not dry_run:
                shutil.rmtree(entry)
    if not unused:
        click.echo("No unused cached images.")
    elif not dry_run:
        click.echo(f"Reclaimed {human(total)}.")
