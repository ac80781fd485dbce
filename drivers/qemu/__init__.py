"""The `qemu` driver: local VMs under QEMU (KVM when it really works, else TCG) with user-mode networking."""
