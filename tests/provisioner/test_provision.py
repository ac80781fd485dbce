"""Provisioning pieces that need no host: OS detection, engine config, rendered service files."""

import json
import subprocess

import pytest

from dockyard import templates
from dockyard.provisioner.core.errors import UnsupportedOS
from dockyard.provisioner.provision import engine_config, initsys, osinfo

OS_RELEASES = {
    "debian": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "debian"),
    "ubuntu": ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n', "debian"),
    "fedora": ("NAME=Fedora\nID=fedora\nVERSION_ID=40\n", "redhat"),
    "rocky": ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "redhat"),
    "alpine": ('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n', "alpine"),
    "mint": ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "debian"),
}


@pytest.mark.parametrize("name", sorted(OS_RELEASES))
def test_os_families(name):
    text, family = OS_RELEASES[name]
    assert osinfo.classify(osinfo.parse_os_release(text)).family == family


def test_unsupported_os_lists_the_supported_ones():
    with pytest.raises(UnsupportedOS) as e:
        osinfo.classify(osinfo.parse_os_release('PRETTY_NAME="Gentoo Linux"\nID=gentoo\n'))
    assert 'unsupported OS "Gentoo Linux"' in str(e.value) and "Debian, Ubuntu" in str(e.value)


def test_parse_os_release_quotes_comments_and_junk():
    v = osinfo.parse_os_release("# c\nID=\"debian\"\nBROKEN\nNAME='x y'\nEMPTY=\n")
    assert v == {"ID": "debian", "NAME": "x y", "EMPTY": ""}


def test_install_command_per_family():
    deb = osinfo.classify({"ID": "debian"}).install_command(["python3"])
    assert "apt-get" in deb and "python3" in deb
    assert "dnf -y install python3" in osinfo.classify({"ID": "fedora"}).install_command(["python3"])
    assert osinfo.classify({"ID": "alpine"}).install_command(["python3"]) == "apk add --no-cache python3"


def test_engine_config_keeps_every_engine_flag():
    cfg = engine_config(
        {
            "ArbitraryFlags": ["bip=172.30.0.1/16", "--log-level=debug", "debug"],
            "Labels": ["a=b", "provider=generic"],
            "InsecureRegistry": ["reg:5000"],
            "RegistryMirror": ["https://mirror"],
            "StorageDriver": "overlay2",
            "Env": ["HTTP_PROXY=x"],
        },
        2377,
    )
    assert cfg["hosts"] == ["unix:///run/dockyard/engine.sock", "tcp://0.0.0.0:2377"]
    assert cfg["tlsverify"] is True and cfg["tlscacert"] == "/etc/dockyard/ca.pem"
    assert cfg["opts"] == {"bip": "172.30.0.1/16", "log-level": "debug", "debug": "true", "registry-pull": "all"}
    assert cfg["labels"] == ["a=b", "provider=generic"]
    assert cfg["insecure-registries"] == ["reg:5000"] and cfg["registry-mirrors"] == ["https://mirror"]
    rendered = templates.render("engine.json.j2", config=cfg)
    assert json.loads(rendered) == cfg
    # the user's choice wins over the default pull policy
    assert engine_config({"ArbitraryFlags": ["registry-pull=local"]}, 2376)["opts"]["registry-pull"] == "local"


class _NoSession:
    pass


@pytest.mark.parametrize(
    "kind,template", [("systemd", "engine.service.j2"), ("openrc", "engine.openrc.j2"), ("none", "engine-ctl.sh.j2")]
)
def test_service_files_render(kind, template):
    svc = initsys.for_host(kind, _NoSession(), "m1", "/usr/bin/python3", ["HTTP_PROXY=http://p:3128", "Q=a b"])
    text = templates.render(template, **svc.context())
    assert "/usr/local/lib/dockyard/dockyard-engine.pyz" in text and "/etc/dockyard/engine.json" in text
    if kind == "systemd":
        assert 'Environment="Q=a b"' in text and "KillMode=process" in text
    else:
        assert "export Q='a b'" in text


def test_bad_engine_env_is_refused():
    svc = initsys.for_host("none", _NoSession(), "m1", "python3", ["NOVALUE"])
    with pytest.raises(Exception, match="KEY=VALUE"):
        svc.context()


def test_no_init_script_is_valid_sh(tmp_path):
    svc = initsys.for_host("none", _NoSession(), "m1", "python3", [])
    script = tmp_path / "ctl"
    script.write_text(templates.render("engine-ctl.sh.j2", **svc.context()))
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
