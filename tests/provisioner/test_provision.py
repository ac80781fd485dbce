"""Provisioning pieces that need no host: OS detection, engine config, rendered service files."""

import json
import os
import shlex
import subprocess

import pytest

from dockyard import templates
from dockyard.engine import config as engine_settings
from dockyard.provisioner.core.errors import UnsupportedOS, UsageError
from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import cluster, machine
from dockyard.provisioner.machines.machine import Machine
from dockyard.provisioner.provision import dockerengine, engine_config, initsys, osinfo, swarm

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


def test_engine_opt_concurrency_limits_reach_the_engine(tmp_path):
    cfg = engine_config({"ArbitraryFlags": ["max-concurrent-downloads=2", "max-concurrent-uploads=1", "bip=x"]}, 2376)
    assert "max-concurrent-downloads" not in cfg["opts"] and cfg["opts"]["bip"] == "x"
    path = tmp_path / "engine.json"
    path.write_text(templates.render("engine.json.j2", config=cfg))
    engine_cfg, _ = engine_settings.parse_config(["--config-file", str(path)])
    assert (engine_cfg.max_concurrent_downloads, engine_cfg.max_concurrent_uploads) == (2, 1)
    # a value that is no number reaches the engine as given, which refuses to start with a clear error
    bad = engine_config({"ArbitraryFlags": ["max-concurrent-uploads=many"]}, 2376)
    path.write_text(templates.render("engine.json.j2", config=bad))
    with pytest.raises(engine_settings.ConfigError, match="integer"):
        engine_settings.parse_config(["--config-file", str(path)])


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


# --- Docker Engine (`create --engine docker`) --------------------------------------------------------------------
DOCKER_OPTIONS = {
    "ArbitraryFlags": ["log-driver=json-file", "--default-ulimit=nofile=1024:2048", "debug", "cgroup-parent=dy x"],
    "Labels": ["a=b", "provider=generic"],
    "InsecureRegistry": ["reg:5000"],
    "RegistryMirror": ["https://mirror.test"],
    "StorageDriver": "vfs",
    "Env": ["HTTP_PROXY=http://p:3128", "Q=a b %h $HOME"],
}


def test_docker_daemon_config_maps_every_engine_flag():
    cfg = dockerengine.daemon_config(DOCKER_OPTIONS, 2377)
    assert cfg["hosts"] == ["tcp://0.0.0.0:2377", "unix:///var/run/docker.sock"]
    assert cfg["tlsverify"] is True and cfg["live-restore"] is True
    assert (cfg["tlscacert"], cfg["tlscert"], cfg["tlskey"]) == (
        "/etc/dockyard/ca.pem",
        "/etc/dockyard/server.pem",
        "/etc/dockyard/server-key.pem",
    )
    assert cfg["labels"] == ["a=b", "provider=generic"] and cfg["storage-driver"] == "vfs"
    assert cfg["insecure-registries"] == ["reg:5000"] and cfg["registry-mirrors"] == ["https://mirror.test"]
    assert json.loads(templates.render("docker-daemon.json.j2", config=cfg)) == cfg
    # --engine-opt goes to dockerd's command line, as Docker Machine passed it
    assert dockerengine.dockerd_args(DOCKER_OPTIONS) == [
        "--log-driver=json-file",
        "--default-ulimit=nofile=1024:2048",
        "--debug",
        "--cgroup-parent=dy x",
    ]
    # live-restore can be turned off, and then lives in the config file only
    off = {"ArbitraryFlags": ["live-restore=false"]}
    assert dockerengine.daemon_config(off, 2376)["live-restore"] is False and dockerengine.dockerd_args(off) == []


@pytest.mark.parametrize(
    "opt,message",
    [
        ("tlsverify=false", "dockyard sets tlsverify"),
        ("H=tcp://0.0.0.0:1", "use --engine-port"),
        ("--label=x=y", "use --engine-label"),
        ("storage-driver=vfs", "use --engine-storage-driver"),
        ("registry-pull=local", "option of the dockyard engine"),
        ("live-restore=maybe", "true or false"),
    ],
)
def test_docker_engine_refuses_options_it_cannot_pass(opt, message):
    with pytest.raises(UsageError, match=message):
        dockerengine.check_options({"ArbitraryFlags": [opt]})


def test_docker_systemd_dropin_replaces_execstart_and_quotes():
    svc = dockerengine.DockerService(None, "systemd", "m1", DOCKER_OPTIONS, "/usr/sbin/dockerd", containerd_unit=True)
    path, data, mode = svc.service_file()
    text = data.decode()
    assert path == "/etc/systemd/system/docker.service.d/10-dockyard.conf" and mode == 0o644
    lines = text.splitlines()
    i = lines.index("ExecStart=")  # the package's command line (-H fd://) is dropped first
    assert lines[i + 1] == (
        "ExecStart=/usr/sbin/dockerd --config-file /etc/dockyard/docker-daemon.json "
        "--containerd=/run/containerd/containerd.sock --log-driver=json-file --default-ulimit=nofile=1024:2048 "
        '--debug "--cgroup-parent=dy x"'
    )
    assert 'Environment="Q=a b %%h $HOME"' in lines and 'Environment="HTTP_PROXY=http://p:3128"' in lines
    assert svc.restart_cmd == "systemctl restart docker.service"
    # % and $ in an argument are not expanded by systemd
    assert templates.render("docker-dropin.conf.j2", argv=["/d", "--x=a%b$c"], **_docker_ctx()).count("--x=a%%b$$c")


def _docker_ctx():
    return dict(dockyard_version="0", machine="m1", config_path="/c.json", env=[], env_pairs=[])


def test_docker_openrc_conf_is_sourceable(tmp_path):
    svc = dockerengine.DockerService(None, "openrc", "m1", DOCKER_OPTIONS, "/usr/bin/dockerd")
    path, data, _ = svc.service_file()
    assert path == "/etc/conf.d/docker"
    conf = tmp_path / "docker"
    conf.write_bytes(data)
    out = subprocess.run(
        ["sh", "-c", '. "$1" && printf "%s\\n%s\\n" "$DOCKER_OPTS" "$Q"', "sh", str(conf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("--config-file /etc/dockyard/docker-daemon.json --log-driver=json-file")
    assert out[1] == "a b %h $HOME"


def test_docker_no_init_ctl_script_runs_dockerd_with_its_config(tmp_path):
    svc = dockerengine.DockerService(None, "none", "m1", DOCKER_OPTIONS, "/usr/sbin/dockerd")
    path, data, mode = svc.service_file()
    assert path == "/usr/local/lib/dockyard/dockerd-ctl" and mode == 0o755
    script = tmp_path / "ctl"
    script.write_bytes(data)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = data.decode()
    assert "setsid /usr/sbin/dockerd --config-file /etc/dockyard/docker-daemon.json" in text
    assert "'--cgroup-parent=dy x'" in text and "export Q='a b %h $HOME'" in text
    assert "--containerd" not in text  # without init, dockerd runs its own containerd


def test_docker_install_command_per_family():
    deb = dockerengine.install_command(osinfo.classify({"ID": "ubuntu"}))
    assert "apt-get" in deb and "docker.io" in deb
    fedora = dockerengine.install_command(osinfo.classify({"ID": "fedora"}))
    assert fedora.index("install moby-engine") < fedora.index("install docker")  # moby-engine first, then docker
    assert dockerengine.install_command(osinfo.classify({"ID": "alpine"})) == "{ apk add --no-cache docker; }"


def _fake_bin(tmp_path, owner_output):
    """A PATH dir whose dpkg-query answers owner_output and whose apt-get records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dpkg-query").write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(owner_output)}\n")
    (bindir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt.log\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bindir}:/usr/bin:/bin"}


def test_docker_upgrade_upgrades_the_package_that_owns_dockerd(tmp_path):
    env = _fake_bin(tmp_path, "docker.io: /usr/sbin/dockerd\n")
    cmd = dockerengine.upgrade_command("debian", "/usr/sbin/dockerd")
    subprocess.run(["sh", "-c", cmd], env=env, check=True)
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "update -q"
    assert calls[1].endswith("install -y --only-upgrade --no-install-recommends docker.io")


def test_docker_upgrade_refuses_a_dockerd_no_package_owns(tmp_path):
    env = _fake_bin(tmp_path, "")
    p = subprocess.run(["sh", "-c", dockerengine.upgrade_command("debian", "/opt/dockerd")], env=env)
    assert p.returncode == 3 and not (tmp_path / "apt.log").exists()


def test_engine_choice_is_stored_and_old_configs_mean_the_dockyard_engine(tmp_path):
    store = Store(str(tmp_path / "store"))
    assert Machine(store, "old", {"DriverName": "none", "HostOptions": {"EngineOptions": {}}}).engine == "dockyard"
    assert Machine(store, "new", {"DriverName": "none", "HostOptions": {"Engine": "docker"}}).engine == "docker"
    # options dockerd cannot take are refused before anything is created
    with pytest.raises(UsageError, match="dockyard sets tlsverify"):
        machine.create(
            store, "x1", "none", {}, {"ArbitraryFlags": ["tlsverify=false"]}, [], lambda m: None, engine="docker"
        )
    with pytest.raises(UsageError, match="unknown engine"):
        machine.create(store, "x2", "none", {}, {}, [], lambda m: None, engine="podman")
    assert not os.path.exists(store.machine_dir("x1")) and not os.path.exists(store.machine_dir("x2"))


# --- swarm mode ----------------------------------------------------------------------------------------------------
def test_swarm_requests_from_options():
    body = swarm.init_request("10.0.0.5", ["default-addr-pool=10.20.0.0/16,10.21.0.0/16", "data-path-port=4790"])
    assert body["ListenAddr"] == "0.0.0.0:2377" and body["AdvertiseAddr"] == "10.0.0.5"
    assert body["DefaultAddrPool"] == ["10.20.0.0/16", "10.21.0.0/16"] and body["DataPathPort"] == 4790
    join = swarm.join_request("10.0.0.6", "10.0.0.5", "SWMTKN-x", ["availability=drain"])
    assert join == {
        "ListenAddr": "0.0.0.0:2377",
        "AdvertiseAddr": "10.0.0.6",
        "RemoteAddrs": ["10.0.0.5:2377"],
        "JoinToken": "SWMTKN-x",
        "Availability": "drain",
    }
    with pytest.raises(UsageError, match="--swarm-opt"):
        swarm.init_request("10.0.0.5", ["strategy=binpack"])


def test_swarm_flags_become_swarm_options_or_are_refused():
    common = dict(opts=(), join_opts=(), classic={}, engine="docker", names=["w1"])
    worker = cluster.options_from_flags(swarm_flag=True, master=False, manager=False, join="m1", **common)
    assert worker and worker["Agent"] and not worker["Manager"] and worker["Join"] == "m1"
    master = cluster.options_from_flags(swarm_flag=False, master=True, manager=False, join=None, **common)
    assert master and master["Master"] and master["Manager"]
    assert cluster.options_from_flags(swarm_flag=False, master=False, manager=False, join=None, **common) is None
    for kwargs, message in (
        (dict(swarm_flag=True, master=False, manager=False, join=None), "say which swarm"),
        (dict(swarm_flag=False, master=True, manager=False, join="m1"), "choose one"),
    ):
        with pytest.raises(UsageError, match=message):
            cluster.options_from_flags(**kwargs, **common)
    with pytest.raises(UsageError, match="add --engine docker"):
        cluster.options_from_flags(
            swarm_flag=False, master=True, manager=False, join=None, **dict(common, engine="dockyard")
        )
    with pytest.raises(UsageError, match="belongs to classic Swarm"):
        cluster.options_from_flags(
            swarm_flag=True, master=False, manager=False, join="m1", **dict(common, classic={"swarm-image": "swarm"})
        )


def test_swarm_column_and_join_target():
    assert cluster.column({"HostOptions": {"SwarmOptions": {"IsSwarm": True, "Cluster": "m1", "Manager": True}}}) == (
        "m1 (manager)"
    )
    assert cluster.column({"HostOptions": {"SwarmOptions": {"IsSwarm": True, "Cluster": "m1"}}}) == "m1"
    assert cluster.column({"HostOptions": {}}) == ""
    so = {"Join": "m2"}
    cluster.check_join(
        so, {"HostOptions": {"Engine": "docker", "SwarmOptions": {"Manager": True, "Cluster": "m1"}}}, "m2"
    )
    assert so["Cluster"] == "m1"  # joined through m2, a manager of m1's swarm
    with pytest.raises(UsageError, match="not a swarm manager"):
        cluster.check_join({}, {"HostOptions": {"Engine": "docker", "SwarmOptions": {"Agent": True}}}, "w1")


def test_swarm_quorum_check():
    def mgr(i, reach="reachable"):
        return {"ID": i, "ManagerStatus": {"Reachability": reach}}

    assert swarm.keeps_quorum_without([mgr("a"), mgr("b"), mgr("c")], "a")
    assert not swarm.keeps_quorum_without([mgr("a"), mgr("b"), mgr("c", "unreachable")], "a")
    assert swarm.keeps_quorum_without([mgr("a"), mgr("b")], "a")
    assert not swarm.keeps_quorum_without([mgr("a"), {"ID": "w"}], "a")  # no manager would be left


def test_swarm_nodes_run_without_live_restore():
    assert (
        dockerengine.daemon_config({"ArbitraryFlags": ["live-restore=true"]}, 2376, swarm=True)["live-restore"] is False
    )


def test_uninstall_scripts_are_valid_sh_for_every_init_system():
    import subprocess

    from dockyard.provisioner.provision import initsys, uninstall_engine_script

    for kind in initsys.KINDS:
        script = uninstall_engine_script(kind)
        assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0, script
        assert "rm -rf /etc/dockyard" in script and "/var/lib" not in script


def test_provisioning_rewrites_nothing_only_when_the_running_engine_has_every_file(tmp_path):
    import hashlib

    from dockyard.provisioner.provision import REMOTE_KEY, HostFacts, already_installed, engine_files, first_boot_files

    for name in ("ca.pem", "server.pem", "server-key.pem"):
        (tmp_path / name).write_bytes(name.encode())
    bundle = tmp_path / "engine.pyz"
    bundle.write_bytes(b"PK bundle")
    certs = [str(tmp_path / n) for n in ("ca.pem", "server.pem", "server-key.pem")]
    files, then = engine_files("systemd", "/usr/bin/python3", "m1", {}, 2376, *certs, bundle)
    assert "systemctl restart dockyard-engine.service" in then
    on_host = {p: hashlib.sha256(d).hexdigest() for p, d, _ in files}
    info = osinfo.classify({"ID": "debian"})
    assert already_installed(HostFacts(info, "/usr/bin/python3", "systemd", "", on_host, True), files)
    # the first boot's engine did not start: everything is pushed and the engine restarted
    assert not already_installed(HostFacts(info, "/usr/bin/python3", "systemd", "", on_host, False), files)
    # one file differs (a config changed since the first boot) or is missing
    changed = dict(on_host, **{initsys.CONFIG_PATH: "0" * 64})
    assert not already_installed(HostFacts(info, "/usr/bin/python3", "systemd", "", changed, True), files)
    missing = {p: d for p, d in on_host.items() if p != REMOTE_KEY}
    assert not already_installed(HostFacts(info, "/usr/bin/python3", "systemd", "", missing, True), files)
    # a first boot only where the init system can queue the start without waiting for the boot
    assert first_boot_files("openrc", "/usr/bin/python3", "m1", {}, 2376, *certs, tmp_path / "cache") is None
