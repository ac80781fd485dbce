"""The machine flows (create, provision, start, stop, rm, state) with a fake driver, a fake SSH session and a
fake engine check, handed in through machine.Collaborators: no root, no network, no sshd.

The provisioning steps themselves run for real against the fake session, which keeps the files pushed onto
the "host" and answers the commands provisioning sends, so the tests see what a real host would get.
"""

import hashlib
import io
import json
import os
import re
import shlex
import stat
import tarfile
import zipfile

import pytest

from dockyard.drivers.base import POWER, Driver, Flag, State
from dockyard.provisioner.core import pki
from dockyard.provisioner.core.errors import (
    DockyardError,
    DriverError,
    EngineUnreachable,
    HostAlreadyInState,
    HostNotRunning,
    MachineAlreadyExists,
    MachineNotExist,
    PreCreateCheckError,
    ProvisionError,
    RemoteCommandError,
)
from dockyard.provisioner.core.ssh import CommandResult
from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine
from dockyard.provisioner.machines.machine import Collaborators, Machine
from dockyard.provisioner.provision import initsys

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
ENGINE_OPTIONS = {
    "ArbitraryFlags": [],
    "Env": ["HTTP_PROXY=http://proxy:3128"],
    "InsecureRegistry": [],
    "Labels": ["provider=fake", "team=a"],
    "RegistryMirror": [],
    "StorageDriver": "overlay2",
    "TlsVerify": True,
}


# ------------------------------------------------------------------------------------------------ fakes


class FakeCloud:
    """What the fake driver manages: one state and address per machine, every driver call, injected failures."""

    def __init__(self):
        self.states = {}
        self.ips = {}
        self.calls = []
        self.failures = {}  # driver method name -> exception it raises

    def call(self, method, name):
        self.calls.append((method, name))
        if method in self.failures:
            raise self.failures[method]


class FakeDriver(Driver):
    """A driver over a FakeCloud (set on a subclass per test, see the `world` fixture)."""

    name = "fake"
    flags = [Flag("fake-size", "Size of the fake host.", default="small")]
    capabilities = POWER
    cloud: FakeCloud

    def set_config_from_flags(self, options):
        self.config["Size"] = options.get("fake_size") or "small"

    def pre_create_check(self):
        self.cloud.call("pre_create_check", self.machine_name)

    def create(self):
        self.cloud.call("create", self.machine_name)
        self.cloud.states[self.machine_name] = State.RUNNING
        self.cloud.ips.setdefault(self.machine_name, "192.0.2.10")

    def remove(self):
        self.cloud.call("remove", self.machine_name)
        self.cloud.states.pop(self.machine_name, None)

    def state(self):
        return self.cloud.states.get(self.machine_name, State.NONE)

    def ip(self):
        return self.cloud.ips[self.machine_name]

    def start(self):
        self.cloud.call("start", self.machine_name)
        self.cloud.states[self.machine_name] = State.RUNNING

    def stop(self):
        self.cloud.call("stop", self.machine_name)
        self.cloud.states[self.machine_name] = State.STOPPED

    def kill(self):
        self.cloud.call("kill", self.machine_name)
        self.cloud.states[self.machine_name] = State.STOPPED

    def restart(self):
        self.cloud.call("restart", self.machine_name)
        self.cloud.states[self.machine_name] = State.RUNNING


class FakeHost:
    """The host behind the fake SSH sessions: its files, the commands it ran, what provisioning asks of it."""

    def __init__(self):
        self.files = {}  # remote path -> (bytes, mode)
        self.commands = []  # (command, sudo)
        self.os_release = DEBIAN
        self.init = "systemd"
        self.engine_log = "engine: listening on tcp://0.0.0.0:2376\nengine: bad config\n"
        self.failures = {}  # substring of a command -> (exit status, stderr)
        self.sessions_opened = 0
        self.sessions_closed = 0

    def ran(self, fragment):
        return [c for c, _ in self.commands if fragment in c]


class FakeSession:
    """What provisioning calls on an SSH session (run, with input), answered by a FakeHost."""

    def __init__(self, host):
        self.host = host
        host.sessions_opened += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.host.sessions_closed += 1

    def run(self, command, *, sudo=False, check=True, input=None, timeout=None, env=None):
        self.host.commands.append((command, sudo))
        status, out, err = self._answer(command, input)
        for fragment, (fail_status, fail_err) in self.host.failures.items():
            if fragment in command:
                status, out, err = fail_status, "", fail_err
        if check and status != 0:
            raise RemoteCommandError(command, status, out, err)
        return CommandResult(status, out, err)

    def _answer(self, command, data):
        if "==os-release" in command:  # the facts command
            bundle = self.host.files.get(initsys.BUNDLE_PATH)
            digest = f"{hashlib.sha256(bundle[0]).hexdigest()}  {initsys.BUNDLE_PATH}" if bundle else ""
            out = (
                f"==os-release\n{self.host.os_release}==python\n/usr/bin/python3\n3.11\n"
                f"==init\n{self.host.init}\n==bundle\n{digest}\n"
            )
            return 0, out, ""
        if command.startswith('t=$(mktemp) && cat > "$t"'):  # push_files: a tar, then renames into place
            members = {}
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for info in tar.getmembers():
                    members[info.name] = (tar.extractfile(info).read(), info.mode)
            for member, path in re.findall(r'mv -f "\$s/(f\d+)" (\S+)', command):
                self.host.files[shlex.split(path)[0]] = members[member]
            return 0, "", ""
        if command.startswith(f"sha256sum {initsys.BUNDLE_PATH}"):
            bundle = self.host.files.get(initsys.BUNDLE_PATH)
            if bundle is None:
                return 1, "", ""
            return 0, f"{hashlib.sha256(bundle[0]).hexdigest()}  {initsys.BUNDLE_PATH}\n", ""
        if command.startswith("journalctl") or command.startswith("tail -n"):
            return 0, self.host.engine_log, ""
        return 0, "", ""


class FakeEngine:
    """The engine's readiness check: answers when `up`, records every wait."""

    def __init__(self):
        self.up = True
        self.waits = []

    def wait(self, url, tls, timeout):
        self.waits.append((url, tls.ca, tls.cert, tls.key, timeout))
        if not self.up:
            raise EngineUnreachable(f"engine did not answer /_ping over TLS at {url} within {timeout:.0f}s: refused")


class World:
    def __init__(self, tmp_path):
        self.store = Store(str(tmp_path / "store"))
        self.cloud = FakeCloud()
        self.host = FakeHost()
        self.engine = FakeEngine()
        self.driver_cls = type("BoundFakeDriver", (FakeDriver,), {"cloud": self.cloud})
        self.lines = []
        self.opened = []  # (target, timeout, step) of every SSH session asked for
        self.collaborators = Collaborators(
            driver_class=self.driver_class, open_session=self.open_session, wait_engine=self.engine.wait
        )

    def driver_class(self, name):
        assert name == "fake"
        return self.driver_cls

    def open_session(self, target, timeout, step):
        self.opened.append((target, timeout, step))
        return FakeSession(self.host)

    def log(self, line):
        self.lines.append(line)

    def create(self, name="m1", **kw):
        kw.setdefault("driver_options", {"fake_size": "large"})
        return machine.create(
            self.store,
            name,
            "fake",
            kw["driver_options"],
            json.loads(json.dumps(ENGINE_OPTIONS)),
            kw.get("tls_sans", ["extra.example"]),
            self.log,
            collaborators=self.collaborators,
        )

    def load(self, name="m1"):
        return Machine.load(self.store, name, self.collaborators)

    def config(self, name="m1"):
        with open(os.path.join(self.store.machine_dir(name), "config.json")) as f:
            return json.load(f)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


# ------------------------------------------------------------------------------------------------ create


def test_create_provisions_the_host_and_records_a_running_machine(world):
    m = world.create()
    d = world.store.machine_dir("m1")
    cfg = world.config()
    assert cfg["Name"] == "m1" and cfg["DriverName"] == "fake" and cfg["ConfigVersion"] == 3
    assert cfg["Status"]["State"] == "Running" and cfg["Status"]["Error"] == "" and cfg["Status"]["Step"] == ""
    assert cfg["Driver"] == {"Size": "large"}
    assert cfg["HostOptions"]["EngineOptions"] == ENGINE_OPTIONS
    auth = cfg["HostOptions"]["AuthOptions"]
    assert auth["ServerCertSANs"] == ["extra.example"] and auth["ServerCertIP"] == "192.0.2.10"
    assert auth["ServerCertPath"] == "machines/m1/server.pem" and auth["CaCertPath"] == "certs/ca.pem"
    assert cfg["Provisioned"] == {
        "OS": "Debian GNU/Linux 12 (bookworm)",
        "OSFamily": "debian",
        "Python": "/usr/bin/python3",
        "Init": "systemd",
        "EngineBundle": hashlib.sha256(world.host.files[initsys.BUNDLE_PATH][0]).hexdigest(),
    }
    assert world.cloud.calls == [("pre_create_check", "m1"), ("create", "m1")]
    assert m.state() == State.RUNNING and world.load().state() == State.RUNNING

    # The client pair is copied for DOCKER_CERT_PATH; the server cert covers the IP, the name and the extra SAN.
    for name, mode in (("ca.pem", 0o644), ("cert.pem", 0o644), ("key.pem", 0o600)):
        with open(os.path.join(world.store.certs_dir, name), "rb") as f:
            assert open(os.path.join(d, name), "rb").read() == f.read()
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == mode
    server = os.path.join(d, "server.pem")
    assert pki.cert_covers(server, "192.0.2.10") and pki.cert_covers(server, "extra.example")

    # What reached the host: the engine bundle, the certs, engine.json and the service, in one round trip.
    files = world.host.files
    assert zipfile.is_zipfile(io.BytesIO(files[initsys.BUNDLE_PATH][0])) and files[initsys.BUNDLE_PATH][1] == 0o755
    assert files["/etc/dockyard/server.pem"] == (open(server, "rb").read(), 0o644)
    assert files["/etc/dockyard/server-key.pem"][1] == 0o600
    engine = json.loads(files[initsys.CONFIG_PATH][0])
    assert engine["hosts"][1] == "tcp://0.0.0.0:2376" and engine["labels"] == ["provider=fake", "team=a"]
    service = files["/etc/systemd/system/dockyard-engine.service"][0].decode()
    assert "HTTP_PROXY=http://proxy:3128" in service
    assert all(sudo for _, sudo in world.host.commands)
    # Register and restart travel with the files, in the same command.
    assert [
        c
        for c in world.host.ran("systemctl")
        if "mv -f" in c and c.endswith("systemctl restart dockyard-engine.service; }")
    ]

    # SSH was waited for once (and closed); the engine was checked over TLS with the machine's copies.
    assert [(t.host, t.machine, step) for t, _, step in world.opened] == [
        ("192.0.2.10", "m1", "Waiting for SSH to be available")
    ]
    assert world.host.sessions_opened == world.host.sessions_closed == 1
    assert world.engine.waits == [
        ("tcp://192.0.2.10:2376", f"{d}/ca.pem", f"{d}/cert.pem", f"{d}/key.pem", machine.ENGINE_WAIT)
    ]
    assert world.lines[:4] == [
        f"Creating CA: {world.store.certs_dir}/ca.pem",
        f"Creating client certificate: {world.store.certs_dir}/cert.pem",
        "Running pre-create checks...",
        "Creating machine...",
    ]
    assert world.lines[-2:] == [
        "Docker is up and running!",
        "To see how to connect your Docker Client to the engine running on this machine, run: dockyard env m1",
    ]


def test_create_refuses_an_existing_name_and_touches_nothing(world):
    world.create()
    before = world.config()
    world.cloud.calls.clear()
    with pytest.raises(MachineAlreadyExists, match='Docker machine "m1" already exists'):
        world.create()
    assert world.cloud.calls == [] and world.config() == before


def test_a_failed_pre_create_check_exits_3_and_reserves_nothing(world):
    world.cloud.failures["pre_create_check"] = PreCreateCheckError("no quota left")
    with pytest.raises(PreCreateCheckError) as info:
        world.create()
    assert info.value.exit_code == 3
    assert str(info.value) == 'Error with pre-create check: "no quota left"'
    assert not os.path.exists(world.store.machine_dir("m1"))
    assert ("create", "m1") not in world.cloud.calls
    assert world.store.names() == []


def test_a_driver_failure_leaves_the_machine_in_error_with_its_step(world):
    world.cloud.failures["create"] = DriverError("the cloud said no\nsecond line of detail")
    with pytest.raises(DriverError):
        world.create()
    status = world.config()["Status"]
    assert (status["State"], status["Step"], status["Error"]) == ("Error", "creating the machine", "the cloud said no")
    m = world.load()
    assert m.state() == State.ERROR
    assert m.error_text() == "creating the machine: the cloud said no"
    assert world.opened == []  # never got as far as SSH


@pytest.mark.parametrize(
    ("break_it", "step", "error"),
    [
        (
            lambda w: setattr(w.host, "os_release", 'ID=plan9\nPRETTY_NAME="Plan 9"\n'),
            "detecting the OS and preparing the host",
            'unsupported OS "Plan 9" (ID=plan9)',
        ),
        (
            lambda w: w.host.failures.update({"mv -f": (1, "tar: disk full")}),
            "installing and starting the engine",
            "remote command failed (exit 1)",
        ),
        (
            lambda w: setattr(w.engine, "up", False),
            "waiting for the engine to answer over TLS",
            "engine did not answer /_ping over TLS at tcp://192.0.2.10:2376 within 60s: refused",
        ),
    ],
    ids=["unsupported-os", "push-fails", "engine-silent"],
)
def test_a_provisioning_failure_records_the_step_it_happened_in(world, break_it, step, error):
    break_it(world)
    with pytest.raises(DockyardError):
        world.create()
    status = world.config()["Status"]
    assert status["State"] == "Error" and status["Step"] == step
    assert status["Error"].startswith(error)
    assert world.load().state() == State.ERROR
    assert world.host.sessions_opened == world.host.sessions_closed == 1


def test_an_engine_that_never_answers_is_reported_with_its_log_tail(world):
    world.engine.up = False
    with pytest.raises(ProvisionError) as info:
        world.create()
    message = str(info.value)
    assert message.startswith("engine did not answer /_ping over TLS at tcp://192.0.2.10:2376")
    assert message.endswith(
        "Last lines of the engine log:\nengine: listening on tcp://0.0.0.0:2376\nengine: bad config"
    )


def test_an_interrupted_create_is_recorded_as_interrupted(world):
    world.cloud.failures["create"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        world.create()
    status = world.config()["Status"]
    assert (status["State"], status["Error"], status["Step"]) == ("Error", "interrupted", "creating the machine")


def test_a_create_still_running_elsewhere_is_starting_and_a_dead_one_is_an_error(world):
    world.create()
    cfg = world.config()
    cfg["Status"] = {"State": "Creating", "Step": "provisioning", "Pid": os.getpid(), "Error": ""}
    world.store.save("m1", cfg)
    assert world.load().state() == State.STARTING and world.load().error_text() == ""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that is surely gone
    cfg["Status"]["Pid"] = pid
    world.store.save("m1", cfg)
    assert world.load().state() == State.ERROR
    assert world.load().error_text() == 'create was interrupted during step "provisioning"; run dockyard rm -f m1'


# ------------------------------------------------------------------------------------------------ rm


def test_rm_deletes_what_the_driver_made_and_the_record(world):
    world.create()
    machine.remove(world.store, "m1", False, world.log, collaborators=world.collaborators)
    assert ("remove", "m1") in world.cloud.calls and "m1" not in world.cloud.states
    assert not os.path.exists(world.store.machine_dir("m1")) and world.store.names() == []
    assert world.lines[-1] == "Successfully removed m1"


def test_rm_keeps_the_record_when_the_driver_fails_unless_forced(world):
    world.create()
    world.cloud.failures["remove"] = DriverError("instance is locked")
    with pytest.raises(DockyardError) as info:
        machine.remove(world.store, "m1", False, world.log, collaborators=world.collaborators)
    assert str(info.value) == 'Error removing host "m1": instance is locked'
    assert world.store.exists("m1")
    machine.remove(world.store, "m1", True, world.log, collaborators=world.collaborators)
    assert not os.path.exists(world.store.machine_dir("m1"))
    assert world.lines[-2:] == [
        'Error removing host "m1": instance is locked (removing the local record anyway, as -f was given)',
        "Successfully removed m1",
    ]


def test_rm_f_clears_a_create_killed_before_its_first_save(world):
    world.store.reserve("half")  # what a create leaves when killed right after reserving the directory
    with pytest.raises(MachineNotExist):
        machine.remove(world.store, "half", False, world.log, collaborators=world.collaborators)
    assert os.path.isdir(world.store.machine_dir("half"))
    machine.remove(world.store, "half", True, world.log, collaborators=world.collaborators)
    assert not os.path.exists(world.store.machine_dir("half"))
    assert world.cloud.calls == []  # no driver to ask: nothing was recorded


def test_rm_f_removes_a_machine_left_in_error(world):
    world.engine.up = False
    with pytest.raises(ProvisionError):
        world.create()
    machine.remove(world.store, "m1", True, world.log, collaborators=world.collaborators)
    assert world.store.names() == [] and ("remove", "m1") in world.cloud.calls


# ------------------------------------------------------------------------------------------------ power


def test_stop_and_kill_refuse_a_stopped_machine(world):
    world.create()
    m = world.load()
    m.stop(world.log)
    assert world.cloud.states["m1"] == State.STOPPED and world.lines[-1] == 'Machine "m1" was stopped.'
    with pytest.raises(HostAlreadyInState, match='Machine "m1" is already stopped.'):
        world.load().kill(world.log)
    with pytest.raises(HostNotRunning):
        world.load().require_running()


def test_start_refuses_a_running_machine(world):
    world.create()
    with pytest.raises(HostAlreadyInState, match='Machine "m1" is already running.'):
        world.load().start(world.log)
    assert ("start", "m1") not in world.cloud.calls


def test_start_checks_the_engine_and_restarts_it_when_it_does_not_answer(world):
    world.create()
    world.load().stop(world.log)
    commands_before = len(world.host.commands)
    world.engine.up = False
    with pytest.raises(ProvisionError):  # restarted, and still silent: reported with the log
        world.load().start(world.log)
    assert world.cloud.states["m1"] == State.RUNNING
    assert world.host.commands[commands_before:] == [
        ("systemctl restart dockyard-engine.service", True),
        ("journalctl -u dockyard-engine.service -n 30 --no-pager -o cat", True),
    ]
    assert len(world.engine.waits) == 3  # create, then after boot (half the wait), then after the restart
    assert world.engine.waits[1][-1] == machine.ENGINE_WAIT / 2

    world.load().stop(world.log)
    world.engine.up = True
    restarts = len(world.host.commands)
    world.load().start(world.log)
    assert len(world.host.commands) == restarts  # the engine answered: nothing was run on the host
    assert world.lines[-1] == 'Machine "m1" was started.'


def test_start_reissues_and_pushes_the_server_cert_when_the_ip_moved(world):
    world.create()
    world.load().stop(world.log)
    world.cloud.ips["m1"] = "192.0.2.99"
    world.load().start(world.log)
    server = os.path.join(world.store.machine_dir("m1"), "server.pem")
    assert pki.cert_covers(server, "192.0.2.99") and not pki.cert_covers(server, "192.0.2.10")
    assert world.host.files["/etc/dockyard/server.pem"][0] == open(server, "rb").read()
    cfg = world.config()
    assert cfg["HostOptions"]["AuthOptions"]["ServerCertIP"] == "192.0.2.99"
    assert "The machine's IP changed to 192.0.2.99; re-issuing its server certificate..." in world.lines
    assert world.engine.waits[-1][0] == "tcp://192.0.2.99:2376"


def test_restart_of_a_stopped_machine_starts_it(world):
    world.create()
    world.load().stop(world.log)
    world.load().restart(world.log)
    assert world.cloud.calls[-1] == ("start", "m1") and world.cloud.states["m1"] == State.RUNNING
    world.load().restart(world.log)
    assert world.cloud.calls[-1] == ("restart", "m1")


# ------------------------------------------------------------------------------------------------ provision


def test_provisioning_again_skips_an_unchanged_bundle_and_keeps_the_config(world):
    world.create()
    bundle_pushes = len(world.host.ran(initsys.BUNDLE_PATH + " && rmdir"))
    m = world.load()
    m.provision(world.log)
    m.set_status("Running")
    assert len(world.host.ran(initsys.BUNDLE_PATH + " && rmdir")) == bundle_pushes  # same digest: not sent again
    assert (
        "Copying the engine to the remote machine..."
        not in world.lines[world.lines.index("Docker is up and running!") :]
    )
    cfg = world.config()
    assert cfg["Status"]["State"] == "Running" and cfg["Provisioned"]["Init"] == "systemd"
    assert world.host.sessions_opened == world.host.sessions_closed == 2


def test_upgrade_refuses_a_machine_that_was_never_provisioned(world):
    world.create()
    cfg = world.config()
    del cfg["Provisioned"]
    world.store.save("m1", cfg)
    with pytest.raises(ProvisionError, match='machine "m1" was never provisioned; run dockyard provision m1'):
        world.load().upgrade(world.log)


def test_upgrade_sends_the_bundle_only_when_the_host_lacks_it_and_restarts_the_engine(world):
    world.create()
    sent = world.host.files.pop(initsys.BUNDLE_PATH)  # as if the host had an older engine
    world.load().upgrade(world.log)
    assert world.host.files[initsys.BUNDLE_PATH] == sent
    assert world.config()["Provisioned"]["EngineBundle"] == hashlib.sha256(sent[0]).hexdigest()
    assert world.host.commands[-1] == ("systemctl restart dockyard-engine.service", True)
    assert world.lines[-5:] == [
        "Upgrading the engine...",
        "Copying the engine to the remote machine...",
        "Restarting the engine...",
        "Checking connection to the engine...",
        "The engine is up and running!",
    ]
    pushes = len(world.host.ran("mv -f"))
    world.load().upgrade(world.log)
    assert len(world.host.ran("mv -f")) == pushes  # the same bundle is not sent again


def test_regenerate_certs_issues_a_new_server_cert_and_pushes_it(world):
    world.create()
    server = os.path.join(world.store.machine_dir("m1"), "server.pem")
    old_serial = pki.load_cert(server).serial_number
    world.load().regenerate_certs(world.log)
    new = open(server, "rb").read()
    assert pki.load_cert(server).serial_number != old_serial
    assert world.host.files["/etc/dockyard/server.pem"][0] == new
    assert world.host.ran("mv -f")[-1].endswith("systemctl restart dockyard-engine.service; }")
    assert world.lines[-2:] == ["Checking connection to the engine...", "The engine is up and running!"]


def test_regenerate_certs_refuses_a_stopped_machine(world):
    world.create()
    world.load().stop(world.log)
    with pytest.raises(HostNotRunning):
        world.load().regenerate_certs(world.log)


def test_upgrade_of_a_stopped_machine_starts_it_then_upgrades_it(world):
    world.create()
    world.load().stop(world.log)
    world.host.files.pop(initsys.BUNDLE_PATH)  # as if the host had an older engine
    del world.lines[:]
    world.load().upgrade(world.log)
    assert world.cloud.states["m1"] == State.RUNNING and world.cloud.calls[-1] == ("start", "m1")
    assert world.lines[:3] == [
        "Starting machine so machine can be upgraded...",
        'Starting "m1"...',
        'Machine "m1" was started.',
    ]
    assert "Upgrading the engine..." in world.lines and initsys.BUNDLE_PATH in world.host.files
    assert world.lines[-1] == "The engine is up and running!"


def test_engine_log_is_read_from_the_hosts_journal_and_needs_a_running_machine(world):
    world.create()
    assert world.load().engine_log(50) == world.host.engine_log
    assert world.host.commands[-1] == ("journalctl -u dockyard-engine.service -n 50 --no-pager -o cat", True)
    world.load().stop(world.log)
    with pytest.raises(HostNotRunning):
        world.load().engine_log(50)


def test_rm_of_a_generic_machine_takes_the_engine_off_the_host_unless_kept(world):
    world.create("g1")
    world.create("g2")
    world.driver_cls.name = "generic"  # the host outlives the machine
    machine.remove(world.store, "g1", False, world.log, collaborators=world.collaborators)
    (script,) = world.host.ran("rm -rf /etc/dockyard")
    assert (script, True) in world.host.commands  # as root
    assert "systemctl disable --now dockyard-engine.service" in script
    assert f"rm -f {initsys.BUNDLE_PATH}" in script and "/var/lib" not in script  # the engine's data stays
    assert world.lines[-2:] == [
        'Removing the engine, its service and /etc/dockyard from "g1"...',
        "Successfully removed g1",
    ]
    assert not world.store.exists("g1")
    machine.remove(world.store, "g2", False, world.log, keep_engine=True, collaborators=world.collaborators)
    assert len(world.host.ran("rm -rf /etc/dockyard")) == 1 and not world.store.exists("g2")


def test_rm_of_a_generic_machine_whose_engine_cannot_be_removed_keeps_the_record_unless_forced(world):
    world.create("g1")
    world.driver_cls.name = "generic"
    world.host.failures["rm -rf /etc/dockyard"] = (1, "rm: read-only file system")
    with pytest.raises(DockyardError) as info:
        machine.remove(world.store, "g1", False, world.log, collaborators=world.collaborators)
    assert str(info.value) == (
        'Error removing host "g1": cannot take the engine off the host: removing the engine failed on the host '
        "(exit 1): rm: read-only file system (--keep-engine leaves it there, -f removes the record anyway)"
    )
    assert world.store.exists("g1")
    machine.remove(world.store, "g1", True, world.log, collaborators=world.collaborators)
    assert not world.store.exists("g1") and world.lines[-1] == "Successfully removed g1"
