"""`python3 -m provisioner` runs the dockyard CLI."""

from provisioner.cli.main import main

main()
