"""How `create` shows drivers' and provisioning progress: one line per step; on a terminal, a running
download's progress line ("  42% 300.0 MiB of 700.0 MiB at 50.0 MiB/s") is redrawn in place instead of
scrolling. When stdout is not a terminal every line is printed as it comes (logs, CI)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TextIO

TRANSIENT = re.compile(r"^\s+(\d+% )?\d+(\.\d+)? (B|KiB|MiB|GiB)( of \S+ \S+)? at \S+ \S+/s$")


class Renderer:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.pending = False  # a transient line is on screen without its newline

    def __call__(self, line: str) -> None:
        if self.tty and TRANSIENT.match(line):
            self.stream.write("\r\x1b[K" + line)
            self.pending = True
        else:
            if self.pending:
                self.stream.write("\r\x1b[K")
                self.pending = False
            self.stream.write(line + "\n")
        self.stream.flush()


def renderer() -> Callable[[str], None]:
    """The progress channel `create` hands the machine layer (and so the driver)."""
    return Renderer()
