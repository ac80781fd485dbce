"""A container's resolv.conf and hosts file."""

from dockyard.engine.network.dns import hosts_file, resolv_conf

HOST = """# managed by systemd-resolved
nameserver 127.0.0.53
nameserver 10.0.0.2
nameserver ::1
search corp.example lab.example
options edns0 trust-ad
"""


def _lines(text):
    return [l for l in text.splitlines() if not l.startswith("#")]


def test_loopback_nameservers_are_dropped_for_bridge():
    assert _lines(resolv_conf({}, "bridge", HOST)) == [
        "nameserver 10.0.0.2",
        "search corp.example lab.example",
        "options edns0 trust-ad",
    ]


def test_only_local_resolvers_fall_back():
    text = resolv_conf({}, "bridge", "nameserver 127.0.0.53\noptions edns0\n")
    assert _lines(text) == ["nameserver 8.8.8.8", "nameserver 8.8.4.4", "options edns0"]
    text = resolv_conf({}, "none", "", fallback=("192.0.2.53",))
    assert _lines(text) == ["nameserver 192.0.2.53"]


def test_host_network_keeps_local_resolvers():
    assert "nameserver 127.0.0.53" in resolv_conf({}, "host", HOST)


def test_run_flags_override():
    text = resolv_conf({"Dns": ["1.1.1.1"], "DnsSearch": ["x.test"], "DnsOptions": ["ndots:2"]}, "bridge", HOST)
    assert _lines(text) == ["nameserver 1.1.1.1", "search x.test", "options ndots:2"]


def test_hosts_file():
    settings = {"IPAddress": "172.18.0.2", "Gateway": "172.18.0.1"}
    text = hosts_file("web", settings, extra_hosts=["db:10.1.2.3", "gw:host-gateway"])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.1.2.3\tdb" in lines and "172.18.0.1\tgw" in lines
    assert lines[-1] == "172.18.0.2\tweb"
    assert "web" not in hosts_file("web", {"IPAddress": ""})  # --network none: no own address line
    assert hosts_file("web", settings, domainname="example.test").splitlines()[-1] == "172.18.0.2\tweb.example.test web"
