"""Runs the dockyard CLI in-process against one store and captures what it prints, for the CLI tests."""

from __future__ import annotations

from collections.abc import Callable

from dockyard.provisioner.cli.main import main


def cli_runner(store: str, capsys) -> Callable[..., tuple[int, str, str]]:
    """A function (*args) -> (exit code, stdout, stderr) for `dockyard --storage-path STORE args...`; the
    function's `store` attribute is STORE."""

    def run(*args):
        code = 0
        try:
            main(["--storage-path", store, *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    run.store = store  # type: ignore[attr-defined]
    return run
