"""Container networking: the bridge/host/none networks, address leases, NAT and published ports."""
