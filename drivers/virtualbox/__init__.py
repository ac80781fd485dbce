"""The `virtualbox` driver: VMs under VirtualBox through VBoxManage (verified only against a stand-in so far)."""
