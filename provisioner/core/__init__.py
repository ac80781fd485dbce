"""The client's core, below the drivers: errors, files (atomic writes, locks), the store, PKI, SSH, credentials
and the engine's TLS client.

Nothing here imports a driver, the machine layer or the CLI.
"""
