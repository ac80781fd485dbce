"""Text of `dockyard env` (set and unset, per shell) and `dockyard config`, in Docker Machine's formats."""

from __future__ import annotations

import os
from collections.abc import Mapping

from dockyard.provisioner.cli.gofuncs import go_quote

__all__ = [
    "SHELLS",
    "GUESSED_SHELL_NOTE",
    "shell_syntax",
    "format_env",
    "format_unset",
    "format_unset_and_env",
    "usage_hint",
    "format_comments",
    "detect_shell",
    "no_proxy_value",
    "argv_hint",
    "format_config",
]

SHELLS = ("bash", "zsh", "sh", "fish", "powershell", "cmd", "tcsh", "emacs")

# Docker Machine prints this (and then fails) when $SHELL is empty; we print it and carry on with bash.
GUESSED_SHELL_NOTE = (
    "The default lines below are for a sh/bash shell, you can specify the shell you're using, with the --shell flag."
)

# syntax -> (prefix, delimiter, suffix); a line is prefix + NAME + delimiter + value + suffix
_SET = {
    "bash": ("export ", '="', '"\n'),
    "fish": ("set -gx ", ' "', '";\n'),
    "powershell": ("$Env:", ' = "', '"\n'),
    "cmd": ("SET ", "=", "\n"),
    "tcsh": ("setenv ", ' "', '";\n'),
    "emacs": ('(setenv "', '" "', '")\n'),
}
_UNSET = {
    "bash": ("unset ", "", "\n"),
    "fish": ("set -e ", "", ";\n"),
    "powershell": ("Remove-Item Env:\\\\", "", "\n"),  # two literal backslashes, as Docker Machine
    "cmd": ("SET ", "=", "\n"),
    "tcsh": ("unsetenv ", "", ";\n"),
    "emacs": ('(setenv "', '" nil', ")\n"),
}

# Characters that would end or expand a double-quoted value, and how each shell escapes them.
# Plain values (URLs, paths, names) contain none, so their lines are byte-identical to Docker Machine's.
_ESCAPES = {
    "bash": {"\\": "\\\\", '"': '\\"', "$": "\\$", "`": "\\`"},
    "fish": {"\\": "\\\\", '"': '\\"', "$": "\\$"},
    "powershell": {"`": "``", '"': '`"', "$": "`$"},
    "emacs": {"\\": "\\\\", '"': '\\"'},
}


def shell_syntax(shell: str) -> str:
    """The syntax family for a shell name: bash, fish, powershell, cmd, tcsh or emacs.

    zsh, sh and any unknown name use bash syntax, as Docker Machine does; pwsh is PowerShell.
    """
    name = (shell or "").lower()
    if name == "pwsh":
        return "powershell"
    return name if name in _SET else "bash"


def _comment(syntax: str) -> str:
    return {"cmd": "REM", "emacs": ";;", "tcsh": ":"}.get(syntax, "#")


def format_comments(shell: str, lines: list[str]) -> str:
    """Lines as comments of the shell (evaluating the output ignores them; the user reads them)."""
    comment = _comment(shell_syntax(shell))
    return "".join(f"{comment} {line}\n" for line in lines)


def usage_hint(shell: str, hint_command: str) -> str:
    """The two comment lines telling the user how to apply the output (note the space after 'shell:')."""
    syntax = shell_syntax(shell)
    comment = _comment(syntax)
    command = {
        "fish": f"eval ({hint_command})",
        "powershell": f"& {hint_command} | Invoke-Expression",
        "cmd": f"\t@FOR /f \"tokens=*\" %i IN ('{hint_command}') DO @%i",
        "emacs": f'(with-temp-buffer (shell-command "{hint_command}" (current-buffer)) (eval-buffer))',
        "tcsh": f"eval `{hint_command}`",
    }.get(syntax, f"eval $({hint_command})")
    return f"{comment} Run this command to configure your shell: \n{comment} {command}\n"


def _escape(syntax: str, value: str) -> str:
    table = _ESCAPES.get(syntax)
    if not table:
        return value
    return "".join(table.get(ch, ch) for ch in value)


def format_env(shell: str, variables: list[tuple[str, str]], hint_command: str | None) -> str:
    """Lines setting each (NAME, value) in order, then the usage hint (omitted if hint_command is None)."""
    syntax = shell_syntax(shell)
    prefix, delim, suffix = _SET[syntax]
    text = "".join(f"{prefix}{name}{delim}{_escape(syntax, str(value))}{suffix}" for name, value in variables)
    return text + (usage_hint(shell, hint_command) if hint_command is not None else "")


def format_unset(shell: str, names: list[str], hint_command: str | None) -> str:
    """Lines unsetting each name, then the usage hint as Docker Machine prints on `env -u` too."""
    prefix, delim, suffix = _UNSET[shell_syntax(shell)]
    text = "".join(f"{prefix}{name}{delim}{suffix}" for name in names)
    return text + (usage_hint(shell, hint_command) if hint_command is not None else "")


def format_unset_and_env(shell: str, unset_names: list[str], variables: list[tuple[str, str]]) -> str:
    """Unset some variables and set others in one output. `eval $(...)` unquoted joins every line into one
    command line: bash syntax ends each unset line with ';' there, or the exports after it would be taken as
    more names to unset. (fish and tcsh lines end with ';' already; PowerShell and cmd run line by line.)"""
    unset = format_unset(shell, unset_names, None)
    if shell_syntax(shell) == "bash":
        unset = unset.replace("\n", ";\n")
    return unset + format_env(shell, variables, None)


def detect_shell(environ: Mapping[str, str]) -> tuple[str, bool]:
    """(shell name, guessed). The name is the basename of $SHELL; with $SHELL empty we guess bash
    (guessed=True) and the caller prints GUESSED_SHELL_NOTE to stderr, where Docker Machine failed."""
    value = environ.get("SHELL", "") or ""
    if not value:
        return "bash", True
    return os.path.basename(value.rstrip("/")) or value, False


def no_proxy_value(environ: Mapping[str, str], ip: str) -> tuple[str, str]:
    """(variable, value) for `env --no-proxy`: lower-case no_proxy if set, else NO_PROXY, with the
    machine IP appended unless already a substring (Docker Machine's exact, substring-based test)."""
    name, value = "no_proxy", environ.get("no_proxy", "")
    if not value:
        name, value = "NO_PROXY", environ.get("NO_PROXY", "")
    if not value:
        return name, ip
    if ip in value:
        return name, value
    return name, f"{value},{ip}"


def argv_hint(argv: list[str]) -> str:
    """The command line repeated in the hint: argv joined by spaces, argv[0] in double quotes when it
    holds a space or a backslash."""
    args = list(argv)
    if args and (" " in args[0] or "\\" in args[0]):
        args[0] = f'"{args[0]}"'
    return " ".join(args)


def format_config(ca: str, cert: str, key: str, url: str) -> str:
    """The five lines of `dockyard config`, paths quoted like Go's %q, for `docker $(dockyard config m) ps`."""
    return (
        f"--tlsverify\n--tlscacert={go_quote(str(ca))}\n--tlscert={go_quote(str(cert))}\n"
        f"--tlskey={go_quote(str(key))}\n-H={url}\n"
    )
