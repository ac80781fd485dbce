"""`python3 -m dockyard.provisioner` runs the dockyard CLI (as does `python3 -m dockyard`)."""

from dockyard.provisioner.cli.main import main

main()
