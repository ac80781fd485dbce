"""The `dockyard` CLI (click): one module per command group, plus output formatting."""
