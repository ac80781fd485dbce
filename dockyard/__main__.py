"""`python -m dockyard`: the dockyard CLI."""

from dockyard.provisioner.cli.main import main

main()
