"""Output of `dockyard ls`: the HostListItem row, Go tabwriter layout, --format rules and name order."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from dockyard.provisioner.cli.gotemplate import Template, compile_template

__all__ = [
    "HostListItem",
    "LS_DEFAULT_FORMAT",
    "LS_HEADERS",
    "tabwrite",
    "tabwrite_text",
    "parse_ls_format",
    "format_ls",
    "natural_sort_key",
    "go_duration",
]

# The tabs are real tabs here; Docker Machine's Go constant holds real tabs too.
LS_DEFAULT_FORMAT = (
    "table {{ .Name }}\t{{ .Active }}\t{{ .DriverName}}\t{{ .State }}\t{{ .URL }}"
    "\t{{ .Swarm }}\t{{ .DockerVersion }}\t{{ .Error}}"
)

# The header row is the same template run over this map.
LS_HEADERS = {
    "Name": "NAME",
    "Active": "ACTIVE",
    "ActiveHost": "ACTIVE_HOST",
    "ActiveSwarm": "ACTIVE_SWARM",
    "DriverName": "DRIVER",
    "State": "STATE",
    "URL": "URL",
    "SwarmOptions": "SWARM_OPTIONS",
    "Swarm": "SWARM",
    "EngineOptions": "ENGINE_OPTIONS",
    "Error": "ERRORS",
    "DockerVersion": "DOCKER",
    "ResponseTime": "RESPONSE",
}

_TABLE_KEY = "table"


@dataclass
class HostListItem:
    """One `ls` row; field names and order are Docker Machine's, so --format templates carry over.

    Active is "*", "* (swarm)", "-" or "" (timed out / error rows). ActiveHost and ActiveSwarm are
    booleans as in Docker Machine (they print true/false). SwarmOptions and EngineOptions are the
    machine's option dicts (or None). ResponseTime is already formatted (see go_duration).
    """

    Name: str
    Active: str = ""
    ActiveHost: bool = False
    ActiveSwarm: bool = False
    DriverName: str = ""
    State: str = ""
    URL: str = ""
    SwarmOptions: dict[str, Any] | None = None
    Swarm: str = ""
    EngineOptions: dict[str, Any] | None = None
    Error: str = ""
    DockerVersion: str = ""
    ResponseTime: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- tabwriter


def tabwrite_text(text: str, minwidth: int = 5, tabwidth: int = 1, padding: int = 3, padchar: str = " ") -> str:
    """Lay out tab-separated text exactly as Go's text/tabwriter with flags 0.

    Cells end with a tab; the text after a line's last tab is not a cell and is never padded.
    A column block is a run of consecutive lines that have a cell in that column; its width is
    the widest cell plus padding, at least minwidth. Widths count code points, as Go counts runes.
    """
    del tabwidth  # only used by Go when padding with tabs
    rows = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write_lines(line0: int, line1: int) -> None:
        for i in range(line0, line1):
            cells = rows[i]
            for j, cell in enumerate(cells):
                out.append(cell)
                if j < len(widths) and j < len(cells) - 1:
                    out.append(padchar * (widths[j] - len(cell)))
            if i + 1 < len(rows):  # the last piece has no newline after it (Go: partial line)
                out.append("\n")

    def format_block(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(rows[this]) - 1:
                this += 1
                continue
            # rows[this] opens a block in this column: print what came before, measure, recurse
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(rows[this]) - 1:
                width = max(width, len(rows[this][column]) + padding)
                this += 1
            widths.append(width)
            format_block(line0, this)
            widths.pop()
            line0 = this
            this += 1  # Go's loop increments past the line that ended the block
        write_lines(line0, line1)

    format_block(0, len(rows))
    return "".join(out)


def tabwrite(lines: list[str]) -> str:
    """tabwrite_text over lines that each get a trailing newline (Docker Machine's ls writer)."""
    return tabwrite_text("".join(line + "\n" for line in lines))


# ----------------------------------------------------------------------------- ls


def natural_sort_key(name: str):
    """Sort key matching skarademir/naturalsort over the lower-cased name, as `docker-machine ls`.

    Chunks of digits and non-digits compare in turn: two numbers by value (then fewer leading
    zeros first), a number before text, text by code point; a prefix sorts first.
    """
    chunks = re.findall(r"[0-9]+|[^0-9]+", name.lower().replace(" ", ""))
    key = []
    for chunk in chunks:
        if chunk[0].isdigit():
            stripped = chunk.lstrip("0")
            key.append((0, len(stripped), stripped, len(chunk)))
        else:
            key.append((1, 0, chunk, 0))
    return (tuple(key), len(name))


def parse_ls_format(fmt: str | None) -> tuple[Template, bool]:
    """Docker Machine's parseFormat: returns (template, table?). A format starting with `table`
    gets a header row and tabwriter alignment; literal `\\t` and `\\n` become tab and newline."""
    final = fmt or LS_DEFAULT_FORMAT
    table = final.startswith(_TABLE_KEY)
    if table:
        final = final[len(_TABLE_KEY) :]
    final = final.strip(" ")
    if table and not final:
        # Docker Machine would print empty lines for a bare "table"; the default columns help more.
        final = LS_DEFAULT_FORMAT[len(_TABLE_KEY) :].strip(" ")
    final = re.sub(r"\\([tn])", lambda m: "\t" if m.group(1) == "t" else "\n", final)
    return compile_template(final + "\n"), table


def format_ls(items, fmt: str | None = None, quiet: bool = False) -> str:
    """The whole stdout of `ls` for these (already filtered) items, sorted by natural name order.

    quiet: names only. fmt "json": a JSON array of the rows (dockyard's addition).
    Template problems raise TemplateError (a UsageError).
    """
    items = sorted(items, key=lambda item: natural_sort_key(item.Name))
    if quiet:
        return "".join(f"{item.Name}\n" for item in items)
    if fmt is not None and fmt.strip() == "json":
        return json.dumps([item.to_dict() for item in items], indent=4) + "\n"
    template, table = parse_ls_format(fmt)
    body = "".join(template(item) for item in items)
    if not table:
        return body
    return tabwrite_text(template(LS_HEADERS) + body)


def go_duration(seconds: float) -> str:
    """Go's time.Duration String() at millisecond precision, for ResponseTime ("0s", "250ms", "1.5s", "1m0s")."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    text = f"{secs}" + (f".{frac:03d}".rstrip("0") if frac else "") + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return sign + text
