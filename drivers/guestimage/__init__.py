"""The guest image shared by the local hypervisor drivers: dockyard's own Debian image (built once, cached by
recipe hash) or a user's image (URL verified by sha256, or a file), plus the cloud-init seed that sets it up."""

from dockyard.drivers.guestimage.build import GuestImage, cache_root, store_cache_dir  # noqa: F401
