"""The `dockyard` CLI (click): the group (`group`), one module per set of commands, output formatting, and
`main`, which assembles the group with every command."""
