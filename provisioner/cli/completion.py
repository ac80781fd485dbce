"""`dockyard completion bash|zsh|fish`: the shell script that wires click's completion (_DOCKYARD_COMPLETE) in."""

import click
from click.shell_completion import get_completion_class

from dockyard.provisioner.cli.group import cli
from dockyard.provisioner.core.errors import DockyardError

COMPLETION_SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_DOCKYARD_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
def completion(shell):
    """Print the completion script for SHELL: commands, options, machine names, drivers after -d,
    env --shell values and ls --filter keys.

    \b
    bash:  eval "$(dockyard completion bash)"      (e.g. in ~/.bashrc)
    zsh:   eval "$(dockyard completion zsh)"       (e.g. in ~/.zshrc)
    fish:  dockyard completion fish > ~/.config/fish/completions/dockyard.fish
    """
    cls = get_completion_class(shell)
    if cls is None:  # click ships all three; a trimmed click would not
        raise DockyardError(f"this click has no {shell} completion")
    click.echo(cls(cli, {}, "dockyard", COMPLETE_VAR).source())
