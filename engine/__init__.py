"""The dockyard engine: serves the Docker Engine API (subset) on a host.

Runs on the host's python3 (>= 3.9) with the standard library only, so it can be
shipped as one zipapp file. Do not import anything outside the stdlib here.
"""

__version__ = "0.1.0"
API_VERSION = "1.50"
MIN_API_VERSION = "1.24"
