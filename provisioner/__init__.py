"""The client side of dockyard, in layers that only point down: `cli` → `machines` → `provision` and
`dockyard.drivers` → `core` (errors, store, PKI, SSH, credentials, the engine's TLS client)."""
