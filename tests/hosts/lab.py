"""A lab switch for several test hosts: one bridge inside a dedicated network namespace.

Hosts plug into the bridge with one veth each, so they reach each other directly (swarm's 2377/7946/4789 and
container traffic) without the root namespace routing anything; the root namespace gets one veth on the same
bridge for the client (dockyard, docker CLI) and reaches the hosts at layer 2. Nothing here enables forwarding,
and the lab's /24 exists only on these veths and that bridge.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.hosts import netns_host
from tests.hosts.netns_host import PREFIX, TestHost


class Lab:
    """`with Lab() as lab: lab.host(rootfs, "m1")...`: the switch, its hosts, and teardown of everything."""

    __test__ = False

    def __init__(self) -> None:
        self.index: int | None = None
        self.netns: str | None = None
        self.veth: str | None = None
        self.dir: Path | None = None
        self.root_ip: str | None = None
        self.hosts: list[TestHost] = []
        self._next = 2

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.teardown()

    def start(self) -> Lab:
        try:
            with netns_host.lock():
                used = netns_host.used_indices()
                self.index = next((i for i in range(1, 255) if i not in used), None)
                if self.index is None:
                    raise RuntimeError("no free 10.231.N.0/24 left for a lab")
                self.netns = f"{PREFIX}{self.index}-lab"
                self.veth = f"{PREFIX}v{self.index}"
                self.dir = netns_host.state_root() / self.netns
                self.dir.mkdir(mode=0o700)
                (self.dir / "owner").write_text(netns_host.owner_token())
                netns_host.run("ip", "netns", "add", self.netns)
            n = self.netns
            netns_host.run("ip", "-n", n, "link", "add", "br0", "type", "bridge")
            netns_host.run("ip", "-n", n, "link", "set", "br0", "up")
            netns_host.run("ip", "-n", n, "link", "set", "lo", "up")
            netns_host.run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "up0", "netns", n)
            netns_host.run("ip", "-n", n, "link", "set", "up0", "master", "br0", "up")
            self.root_ip = f"10.231.{self.index}.1"
            netns_host.run("ip", "addr", "add", self.root_ip + "/24", "dev", self.veth)
            ipv6 = Path(f"/proc/sys/net/ipv6/conf/{self.veth}/disable_ipv6")
            if ipv6.exists():
                ipv6.write_text("1")
            netns_host.run("ip", "link", "set", self.veth, "up")
        except BaseException:
            self.teardown()
            raise
        return self

    def plug(self, host_netns: str, host_name: str) -> tuple[str, str]:
        """Connect a host's namespace to the switch: its eth0 gets the next address. Returns (host IP, root IP)."""
        if self.netns is None:
            raise RuntimeError("the lab is not started")
        if self._next > 254:
            raise RuntimeError("the lab is full")
        ip = f"10.231.{self.index}.{self._next}"
        self._next += 1
        # created in the root namespace under a dy- name (so cleanup_stale finds it after a crash), then moved
        port = f"{PREFIX}{self.index}-{host_name}"[:15]
        netns_host.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host_netns)
        netns_host.run("ip", "link", "set", port, "netns", self.netns)
        netns_host.run("ip", "-n", self.netns, "link", "set", port, "master", "br0", "up")
        netns_host.run("ip", "-n", host_netns, "addr", "add", ip + "/24", "dev", "eth0")
        netns_host.run("ip", "-n", host_netns, "link", "set", "eth0", "up")
        netns_host.run("ip", "-n", host_netns, "link", "set", "lo", "up")
        return ip, self.root_ip or ""

    def host(self, rootfs: str | os.PathLike, name: str, systemd: bool = False) -> TestHost:
        """A started test host on this lab's switch (torn down with the lab)."""
        host = TestHost(rootfs, name=name, systemd=systemd, lab=self)
        self.hosts.append(host)
        return host.start()

    def teardown(self) -> None:
        errors = []
        for host in reversed(self.hosts):
            try:
                host.teardown()
            except Exception as e:  # the others and the switch must still go
                errors.append(e)
        if self.netns:
            netns_host.kill_pids(netns_host.pids_in_netns(self.netns))
            netns_host.run("ip", "netns", "del", self.netns, check=False)
        if self.veth and self.veth in netns_host.link_names():
            netns_host.run("ip", "link", "del", self.veth, check=False)
        if self.dir and self.dir.exists():
            shutil.rmtree(self.dir)
        if errors:
            raise errors[0]
