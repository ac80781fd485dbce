"""The client side of dockyard: the CLI, the machine store, the PKI, SSH and provisioning."""

__version__ = "0.1.0"
