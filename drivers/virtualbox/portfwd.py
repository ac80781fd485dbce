"""Published ports of a VirtualBox machine answer on the laptop's 127.0.0.1: the forwarder of
drivers/qemu/portfwd.py with VirtualBox's NAT rules as its port mapper (`controlvm VM natpf1 "NAME,tcp,127.0.0.1,
PORT,,PORT"` / `natpf1 delete NAME`, on the NAT NIC that also carries the SSH forward).

VirtualBox saves rules added at run time in the VM's settings, and sets up a rule whose host port is taken
without telling VBoxManage (only its VBox.log says so): the mapper tries the port itself first, and the
forwarder takes its rules back when it stops (the driver also clears leftovers before the VM starts).

Run as: python3 -m dockyard.drivers.virtualbox.portfwd --machine-dir DIR --vm NAME --vboxmanage PATH
        --engine-host IP --engine-port N
"""

from __future__ import annotations

import argparse
import socket
import sys

from dockyard.drivers.base import State
from dockyard.drivers.qemu.portfwd import Engine, run
from dockyard.drivers.virtualbox import vbox

RULE_PREFIX = "dockyard-"  # names of the rules the forwarder owns (the driver's own is "ssh")
NIC = "1"  # the NAT NIC


def rule_name(proto: str, port: int) -> str:
    return f"{RULE_PREFIX}{proto}-{port}"


def port_taken(proto: str, port: int) -> str:
    """Why a listener for 127.0.0.1:port/proto cannot be set up on this computer now, or "" when it can
    (TCP with SO_REUSEADDR, as a forwarder's listener: connections lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM) as s:
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return f"127.0.0.1:{port}/{proto}: {e.strerror or e}"
    return ""


class VirtualBoxPorts:
    """NAT rules of a running VirtualBox VM, one per published port."""

    hypervisor = "VirtualBox"
    persistent = True

    def __init__(self, vbm: vbox.VBoxManage, vm: str) -> None:
        self.vbm, self.vm = vbm, vm

    def _info(self) -> dict | None:
        try:
            return vbox.parse_machinereadable(self.vbm("showvminfo", self.vm, "--machinereadable"))
        except vbox.VBoxError as e:
            if e.not_found:
                return None
            raise OSError(str(e)) from None  # the forwarder says so and tries again

    def running(self) -> bool:
        info = self._info()
        return info is not None and vbox.vm_state(info) in (State.RUNNING, State.PAUSED)

    def add(self, proto: str, port: int) -> str:
        taken = port_taken(proto, port)
        if taken:
            return taken
        try:
            self.vbm("controlvm", self.vm, f"natpf{NIC}", f"{rule_name(proto, port)},{proto},127.0.0.1,{port},,{port}")
        except vbox.VBoxError as e:
            return str(e)
        return ""

    def remove(self, proto: str, port: int) -> None:
        # check=False: the rule is gone already when the VM was powered off and on again meanwhile.
        self.vbm("controlvm", self.vm, f"natpf{NIC}", "delete", rule_name(proto, port), check=False)

    def reset(self) -> None:
        info = self._info() or {}
        for name in leftover_rules(info):
            self.vbm("controlvm", self.vm, f"natpf{NIC}", "delete", name, check=False)


def leftover_rules(info: dict) -> list[str]:
    """Names of forwarder rules in the VM's settings (showvminfo): left there by a forwarder that did not stop
    cleanly, they would hold their laptop ports while no container publishes them."""
    return sorted(name for name in vbox.nat_rules(info) if name.startswith(RULE_PREFIX))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dockyard-portfwd-virtualbox", description=__doc__.splitlines()[0])
    ap.add_argument("--machine-dir", required=True)
    ap.add_argument("--vm", required=True)
    ap.add_argument("--vboxmanage", default="VBoxManage")
    ap.add_argument("--engine-host", required=True)
    ap.add_argument("--engine-port", type=int, required=True)
    a = ap.parse_args(argv)
    mapper = VirtualBoxPorts(vbox.VBoxManage(a.vboxmanage), a.vm)
    try:
        return run(a.machine_dir, mapper, Engine(a.engine_port, a.machine_dir, host=a.engine_host))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
