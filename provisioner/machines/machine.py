"""A Machine = its config.json + its driver; the lifecycle verbs (create, start, stop, rm, ...) as named steps."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dockyard.drivers import registry
from dockyard.drivers.base import Capability, Driver, State
from dockyard.drivers.guestimage import resources
from dockyard.provisioner import provision
from dockyard.provisioner.core import engine_client, pki
from dockyard.provisioner.core.errors import (
    CertError,
    DockyardError,
    EngineUnreachable,
    HostAlreadyInState,
    HostNotRunning,
    MachineAlreadyExists,
    ProvisionError,
    UsageError,
)
from dockyard.provisioner.core.files import atomic_write
from dockyard.provisioner.core.ssh_target import SSHTarget
from dockyard.provisioner.core.store import Store, validate_name
from dockyard.provisioner.machines import cluster
from dockyard.provisioner.provision import dockerengine
from dockyard.provisioner.provision.bundle import build_bundle_in_background

if TYPE_CHECKING:
    from dockyard.provisioner.core.ssh import SSHSession

debug_log = logging.getLogger(__name__)  # dockyard -D: every driver call with its time

TRACED_DRIVER_CALLS = ("pre_create_check", "create", "remove", "start", "stop", "kill", "restart", "state", "ip")

ENGINE_WAIT = 60.0
SSH_WAIT = 120.0
UNINSTALL_SSH_WAIT = 20.0  # rm of a host that went away should not hang for SSH_WAIT

HOST_OUTLIVES_MACHINE = ("generic",)
"""Drivers whose remove() leaves the host running: rm takes the engine off it instead (unless --keep-engine)."""

Log = Callable[[str], None]
"""Where a flow's progress lines go (one line per call)."""


def open_ssh_session(target: SSHTarget, timeout: float, step: str) -> SSHSession:
    """Wait until the host answers SSH and accepts the key; the session (see ssh.wait_for_ssh)."""
    from dockyard.provisioner.core.ssh import wait_for_ssh  # lazy: paramiko is slow to import; ls/env never need it

    return wait_for_ssh(target, timeout=timeout, step=step)


def wait_engine_ready(url: str, tls: engine_client.TLSFiles, timeout: float) -> None:
    """Wait until the engine at url answers /_ping over mutual TLS (see engine_client.wait_ready)."""
    engine_client.wait_ready(url, tls, timeout=timeout)


@dataclasses.dataclass(frozen=True)
class Collaborators:
    """What a machine's flows use besides the store: driver classes by name, SSH sessions to the host and the
    engine's readiness check. The defaults are the real ones; tests hand in fakes."""

    driver_class: Callable[[str], type[Driver]] = registry.get
    open_session: Callable[[SSHTarget, float, str], SSHSession] = open_ssh_session
    wait_engine: Callable[[str, engine_client.TLSFiles, float], None] = wait_engine_ready


DEFAULT_COLLABORATORS = Collaborators()


def trace_driver_calls(driver: Driver) -> Driver:
    """With debug logging on, time each driver verb: instance attributes shadow the class's methods, so the
    driver stays what it is (isinstance, capabilities). Without it, the driver is left alone."""
    if not debug_log.isEnabledFor(logging.DEBUG):
        return driver
    for name in TRACED_DRIVER_CALLS:
        method = getattr(driver, name, None)
        if callable(method):
            setattr(driver, name, _timed(driver, name, method))
    return driver


def _timed(driver: Driver, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            result = method(*args, **kwargs)
        except Exception as e:
            took = time.monotonic() - started
            debug_log.debug(
                "driver %s.%s(%s) -> %s: %s after %.3fs",
                driver.name,
                name,
                driver.machine_name,
                type(e).__name__,
                e,
                took,
            )
            raise
        took = time.monotonic() - started
        shown = f" = {result}" if name in ("state", "ip") else ""
        debug_log.debug("driver %s.%s(%s)%s in %.3fs", driver.name, name, driver.machine_name, shown, took)
        return result

    return call


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def default_engine_options() -> dict[str, Any]:
    return {
        "ArbitraryFlags": [],
        "Env": [],
        "InsecureRegistry": [],
        "Labels": [],
        "RegistryMirror": [],
        "StorageDriver": "",  # the engine's choice: overlay2, or vfs where the data-root cannot hold overlayfs
        "TlsVerify": True,
    }


class Step:
    """Names the step in progress so a failure can say where it happened."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.name = ""

    def __call__(self, name: str) -> Step:
        self.name = name
        return self


class Machine:
    """A machine: its config.json (as a dict) and the driver it names."""

    def __init__(
        self,
        store: Store,
        name: str,
        config: dict[str, Any],
        collaborators: Collaborators = DEFAULT_COLLABORATORS,
    ) -> None:
        self.store = store
        self.name = name
        self.config = config
        self.collaborators = collaborators
        self._driver: Driver | None = None

    # -- loading and saving ----------------------------------------------------------
    @classmethod
    def load(cls, store: Store, name: str, collaborators: Collaborators = DEFAULT_COLLABORATORS) -> Machine:
        return cls(store, name, store.load(name), collaborators)

    @property
    def dir(self) -> str:
        return self.store.machine_dir(self.name)

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            cls = self.collaborators.driver_class(self.config["DriverName"])
            self._driver = trace_driver_calls(cls(self.name, self.dir, self.config.get("Driver", {})))
        return self._driver

    def save(self) -> None:
        self.config["Driver"] = self.driver.to_config()
        self.store.save(self.name, self.config)

    @property
    def engine_options(self) -> dict[str, Any]:
        return self.config.setdefault("HostOptions", {}).setdefault("EngineOptions", default_engine_options())

    @property
    def engine(self) -> str:
        """Which engine the machine runs: "dockyard" (the bundled one) or "docker" (Docker Engine). config.json
        files written before the choice existed have no key and mean the bundled engine."""
        return str(self.config.get("HostOptions", {}).get("Engine") or dockerengine.DEFAULT_ENGINE)

    @property
    def auth(self) -> dict[str, Any]:
        return self.config.setdefault("HostOptions", {}).setdefault("AuthOptions", {})

    @property
    def status(self) -> dict[str, Any]:
        return self.config.setdefault("Status", {})

    def set_status(self, state: str, error: str = "", step: str = "") -> None:
        self.config["Status"] = {"State": state, "Error": error, "Step": step, "Pid": os.getpid(), "Updated": _now()}
        self.save()

    # -- files -------------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def tls_files(self) -> engine_client.TLSFiles:
        """The client pair as the docker CLI sees it (DOCKER_CERT_PATH = machine dir)."""
        return engine_client.TLSFiles(self.path("ca.pem"), self.path("cert.pem"), self.path("key.pem"))

    @property
    def cert_paths(self) -> pki.CertPaths:
        return pki.CertPaths(self.store.certs_dir)

    def copy_client_certs(self) -> None:
        cp = self.cert_paths
        for src, name in ((cp.ca, "ca.pem"), (cp.cert, "cert.pem"), (cp.key, "key.pem")):
            with open(src, "rb") as f:
                data = f.read()
            # Copies of the store's pair, written again by every provision: no fsync needed.
            atomic_write(self.path(name), data, 0o600 if name == "key.pem" else 0o644, durable=False)

    def _auth_defaults(self, extra_sans: Iterable[str] = ()) -> None:
        rel = self.store.rel
        cp = self.cert_paths
        self.auth.update(
            CertDir=rel(cp.dir),
            CaCertPath=rel(cp.ca),
            CaPrivateKeyPath=rel(cp.ca_key),
            ClientCertPath=rel(cp.cert),
            ClientKeyPath=rel(cp.key),
            ServerCertPath=rel(self.path("server.pem")),
            ServerKeyPath=rel(self.path("server-key.pem")),
            CaCertRemotePath=provision.REMOTE_CA,
            ServerCertRemotePath=provision.REMOTE_CERT,
            ServerKeyRemotePath=provision.REMOTE_KEY,
            StorePath=rel(self.dir),
        )
        self.auth.setdefault("ServerCertSANs", list(extra_sans))

    # -- addresses and state ---------------------------------------------------------
    def url(self) -> str:
        return self.driver.url()

    def ip(self) -> str:
        return self.driver.ip()

    def state(self) -> State:
        """The machine's state: a failed or interrupted create wins over what the driver says."""
        st = self.status.get("State")
        if st == "Error":
            return State.ERROR
        if st == "Creating":
            pid = self.status.get("Pid")
            if pid and _pid_alive(pid):
                return State.STARTING
            return State.ERROR
        return self.driver.state()

    def error_text(self) -> str:
        st = self.status.get("State")
        if st == "Error":
            step = self.status.get("Step")
            return (f"{step}: " if step else "") + (self.status.get("Error") or "unknown error")
        if st == "Creating" and not _pid_alive(self.status.get("Pid") or 0):
            return (
                f'create was interrupted during step "{self.status.get("Step", "?")}"; run dockyard rm -f {self.name}'
            )
        return ""

    def cert_matches_ip(self) -> bool | None:
        """Does the server cert cover the machine's current address? (None when unknown.)"""
        server = self.path("server.pem")
        if not self.driver.provisions or not os.path.exists(server):
            return None
        try:
            return pki.cert_covers(server, self.ip())
        except DockyardError:
            return None

    def require_running(self) -> None:
        if self.state() != State.RUNNING:
            raise HostNotRunning(self.name)

    # -- SSH ---------------------------------------------------------------------------
    def ssh_target(self) -> SSHTarget:
        return self.driver.ssh_target()

    def session(self, timeout: float = SSH_WAIT, step: str = "Waiting for SSH to be available") -> SSHSession:
        return self.collaborators.open_session(self.ssh_target(), timeout, step)

    # -- certificates --------------------------------------------------------------------
    def issue_server_cert(self, log: Log) -> None:
        sans = pki.server_sans(self.ip(), self.name, self.auth.get("ServerCertSANs", []))
        log("Generating the server certificate...")
        pki.issue_server_cert(self.cert_paths, self.name, self.path("server.pem"), self.path("server-key.pem"), sans)
        self.auth["ServerCertIP"] = self.ip()

    def ensure_server_cert(self, log: Log) -> bool:
        """Re-issue the server cert when the machine's IP is no longer in it. Returns True if re-issued."""
        if self.cert_matches_ip() is False:
            log(f"The machine's IP changed to {self.ip()}; re-issuing its server certificate...")
            self.issue_server_cert(log)
            return True
        return False

    # -- provisioning ------------------------------------------------------------------------
    def provision(
        self, log: Log, step: Step | None = None, session: SSHSession | None = None, *, cert_issued: bool = False
    ) -> None:
        """Full provisioning; keeps containers, images and volumes. cert_issued: create() issued the server
        certificate for the first boot (kept while it covers the machine's address)."""
        step = step or Step(self)
        own = session is None
        session = session or self.session()
        try:
            step("detecting the OS and preparing the host")
            docker = self.engine == "docker"
            facts = provision.prepare_host(session, self.name, log, need_python=not docker)
            self.config["Provisioned"] = facts.to_dict()
            step("issuing the server certificate")
            self.copy_client_certs()
            if not (cert_issued and self.cert_matches_ip()):
                self.issue_server_cert(log)
            self.save()
            step("installing and starting the engine")
            if docker:
                self.config["Provisioned"].update(
                    provision.install_docker_engine(
                        session,
                        facts,
                        self.name,
                        self.engine_options,
                        self.driver.engine_port(),
                        self.path("ca.pem"),
                        self.path("server.pem"),
                        self.path("server-key.pem"),
                        log,
                        swarm=bool(cluster.options(self.config).get("IsSwarm")),
                    )
                )
                step("waiting for the engine to answer over TLS")
                self.wait_engine(session, log)
                return
            digest = provision.install_engine(
                session,
                facts,
                self.name,
                self.engine_options,
                self.driver.engine_port(),
                self.path("ca.pem"),
                self.path("server.pem"),
                self.path("server-key.pem"),
                self.store.cache_dir,
                log,
            )
            self.config["Provisioned"]["EngineBundle"] = digest
            step("waiting for the engine to answer over TLS")
            self.wait_engine(session, log)
        finally:
            if own:
                session.close()

    def wait_engine(self, session: SSHSession, log: Log, timeout: float = ENGINE_WAIT) -> None:
        log("Checking connection to the engine...")
        try:
            self.collaborators.wait_engine(self.url(), self.tls_files(), timeout)
        except (EngineUnreachable, CertError) as e:
            logs = provision.engine_logs(
                session, self.config.get("Provisioned", {}), self.name, self.engine_options, engine=self.engine
            )
            tail = "\n".join(logs.strip().splitlines()[-20:]) if logs.strip() else "(empty)"
            raise ProvisionError(f"{e}\nLast lines of the engine log:\n{tail}") from None
        log("The engine is up and running!")

    def _service(self, session):
        facts = self.config.get("Provisioned") or {}
        if not facts:
            raise ProvisionError(f'machine "{self.name}" was never provisioned; run dockyard provision {self.name}')
        return provision.service_for(session, facts, self.name, self.engine_options, self.engine)

    def restart_engine(self, log: Log, session: SSHSession) -> None:
        svc = self._service(session)
        log("Restarting the engine...")
        svc.restart()
        self.wait_engine(session, log)

    def push_server_cert(self, log: Log, session: SSHSession) -> None:
        """Send the certs and restart the engine in one round trip, then wait until it answers."""
        svc = self._service(session)
        log("Copying certs to the remote machine and restarting the engine...")
        provision.push_certs(
            session, self.path("ca.pem"), self.path("server.pem"), self.path("server-key.pem"), then=svc.restart_cmd
        )
        self.wait_engine(session, log)

    def regenerate_certs(self, log: Log, client_certs: bool = False) -> None:
        if client_certs:
            log("Regenerating local certificates")
            with self.store.lock():
                pki.ensure_ca(self.cert_paths, log)
                pki.ensure_client(self.cert_paths, log, force=True)
        log("Regenerating TLS certificates")
        self.copy_client_certs()
        if not self.driver.provisions:
            return
        self.require_running()
        with self.session() as session:
            self.issue_server_cert(log)
            self.save()
            self.push_server_cert(log, session)

    def upgrade(self, log: Log) -> None:
        """Push this dockyard's engine and restart it; a stopped machine is started first, as Docker Machine did."""
        if self.driver.provisions and self.driver.state() in (State.STOPPED, State.SAVED):
            log("Starting machine so machine can be upgraded...")
            self.start(log)
        self.require_running()
        with self.session() as session:
            self._service(session)  # refuses machines that were never provisioned
            if self.engine == "docker":
                dockerengine.upgrade(session, self.config["Provisioned"], log)
                self.restart_engine(log, session)
                return
            log("Upgrading the engine...")
            digest = provision.push_bundle(session, self.store.cache_dir, log)
            self.config["Provisioned"]["EngineBundle"] = digest
            self.save()
            self.restart_engine(log, session)

    # -- logs -------------------------------------------------------------------------------------
    def engine_log(self, lines: int) -> str:
        """The last lines of the engine's log on the host (journal, no-init log file, or dockerd's), over SSH."""
        self._require_engine_log()
        with self.session() as session:
            return self._service(session).logs(lines)

    def _require_engine_log(self) -> None:
        if not self.driver.provisions:
            raise DockyardError(
                f'machine "{self.name}" uses the {self.driver.name} driver: dockyard did not install its engine, '
                "so it has no engine log to show"
            )
        self.require_running()

    def follow_engine_log(self, lines: int) -> int:
        """Stream the engine's log to stdout (its last lines, then what comes) until interrupted (Ctrl-C)."""
        self._require_engine_log()
        with self.session() as session:
            # The follower dies with the connection: `cat` sees the channel close, as no PTY sends SIGHUP.
            command = f"{self._service(session).log_command(lines, follow=True)} & f=$!; cat >/dev/null; kill $f"
            sudo = "" if session.target.user == "root" else "sudo -n "  # the journal and the log file are root's
            return session.exec_stream(
                f"{sudo}sh -c {shlex.quote(command)}", stdin=lambda _send: threading.Event().wait()
            )

    def serial_log_path(self) -> str | None:
        """The VM's serial console log, kept by the local drivers (qemu, virtualbox) in the machine's directory."""
        path = self.path("serial.log")
        return path if os.path.isfile(path) else None

    def uninstall_engine(self, log: Log) -> None:
        """Take the dockyard engine, its service and /etc/dockyard off the host (rm of a generic machine).
        A Docker Engine machine's dockerd is left alone: dockyard may have found it there."""
        facts = self.config.get("Provisioned") or {}
        if not facts:
            return
        if self.engine == "docker":
            log(f'Leaving Docker Engine on "{self.name}": dockyard may not have installed it.')
            return
        log(f'Removing the engine, its service and /etc/dockyard from "{self.name}"...')
        with self.session(UNINSTALL_SSH_WAIT, "Connecting to remove the engine") as session:
            provision.uninstall_engine(session, facts.get("Init", "none"))

    # -- lifecycle ------------------------------------------------------------------------------
    def _after_boot(self, log):
        """After start/restart: wait for SSH, fix the cert if the IP moved, make sure the engine answers."""
        if not self.driver.provisions:
            return
        with self.session() as session:
            if self.ensure_server_cert(log):
                self.save()
                self.push_server_cert(log, session)
                return
            try:
                self.collaborators.wait_engine(self.url(), self.tls_files(), ENGINE_WAIT / 2)
            except (EngineUnreachable, CertError):
                self.restart_engine(log, session)

    def start(self, log: Log) -> None:
        self.driver.progress = log  # the driver's own progress lines go where this verb's go
        if self.driver.state() == State.RUNNING:
            raise HostAlreadyInState(self.name, "running")
        log(f'Starting "{self.name}"...')
        self.driver.start()
        log(f'Machine "{self.name}" was started.')
        self._after_boot(log)
        self.save()

    def _power_off(self, log, action, doing, done):
        self.driver.progress = log
        if self.driver.state() == State.STOPPED:
            raise HostAlreadyInState(self.name, "stopped")
        log(f'{doing} "{self.name}"...')
        action()
        self.save()
        log(f'Machine "{self.name}" was {done}.')

    def stop(self, log: Log) -> None:
        self._power_off(log, self.driver.stop, "Stopping", "stopped")

    def kill(self, log: Log) -> None:
        self._power_off(log, self.driver.kill, "Killing", "killed")

    def set_resources(
        self, log: Log, cpus: int | None = None, memory: float | None = None, disk: int | None = None
    ) -> None:
        """`dockyard set`: new CPUs, memory (GiB) or disk size (GiB, grows only) for a stopped machine, checked
        like create's --cpus/--memory/--disk; they take effect on its next start."""
        self.driver.require(Capability.RESIZE)
        given = resources.overrides({"cpus": cpus, "memory": memory, "disk": disk})
        if not given:
            raise UsageError("nothing to set: give --cpus, --memory or --disk")
        state = self.state()
        if state != State.STOPPED:
            raise DockyardError(
                f'machine "{self.name}" is {str(state).lower()}: stop it first (dockyard stop {self.name})'
            )
        self.driver.progress = log
        self.driver.resize(given.get("cpus"), given.get("memory_mb"), given.get("disk_mb"))
        self.save()
        log(f'Machine "{self.name}" was changed; the changes take effect when it starts.')

    def restart(self, log: Log) -> None:
        log(f'Restarting "{self.name}"...')
        self.driver.progress = log
        if self.driver.state() == State.STOPPED:
            self.driver.start()
        else:
            self.driver.restart()
        self._after_boot(log)
        self.save()


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True


def create(
    store: Store,
    name: str,
    driver_name: str,
    driver_options: Mapping[str, Any],
    engine_options: dict[str, Any],
    tls_sans: Iterable[str],
    log: Log,
    progress: Log | None = None,
    *,
    collaborators: Collaborators = DEFAULT_COLLABORATORS,
    engine: str = dockerengine.DEFAULT_ENGINE,
    swarm: dict[str, Any] | None = None,
    swarm_ready: Callable[[], None] | None = None,
) -> Machine:
    """Create, provision and record a machine. On failure the machine stays, in state Error, for rm -f.
    progress: where the driver's own progress lines go (default: log). engine: "dockyard" or "docker".
    swarm: SwarmOptions (cluster.options_from_flags) when the machine joins or starts a swarm. swarm_ready: for a
    machine joining a manager made in the same batch, waited for (and the manager checked) just before joining."""
    validate_name(name)
    if engine not in dockerengine.ENGINES:
        raise UsageError(f'unknown engine "{engine}": use one of {", ".join(dockerengine.ENGINES)}')
    if engine == "docker":
        dockerengine.check_options(engine_options)
    store.ensure()
    if store.exists(name) or os.path.exists(store.machine_dir(name)):
        raise MachineAlreadyExists(name)
    if swarm:
        swarm = dict(swarm)
        if swarm.get("Join"):
            if swarm_ready is None:
                cluster.check_join(swarm, store.load(swarm["Join"]), swarm["Join"])
        else:
            swarm["Cluster"] = name
    driver_cls = collaborators.driver_class(driver_name)
    driver = trace_driver_calls(driver_cls(name, store.machine_dir(name), {}, progress=progress or log))
    driver.set_config_from_flags(driver_options)
    if engine_options.get("Port"):
        driver.config["EnginePort"] = engine_options["Port"]

    with store.lock():
        pki.ensure_ca(pki.CertPaths(store.certs_dir), log)
        pki.ensure_client(pki.CertPaths(store.certs_dir), log)

    if driver.provisions and engine == dockerengine.DEFAULT_ENGINE:
        # The engine bundle is built (the first time: byte-compiled and zipped) while the driver and SSH work.
        build_bundle_in_background(store.cache_dir)
    log("Running pre-create checks...")
    driver.pre_create_check()

    store.reserve(name)
    host_options: dict[str, Any] = {"Engine": engine, "EngineOptions": engine_options}
    if swarm:
        host_options["SwarmOptions"] = swarm
    config = {"DriverName": driver_name, "Created": _now(), "HostOptions": host_options}
    m = Machine(store, name, config, collaborators)
    m._driver = driver
    m._auth_defaults(tls_sans)
    step = Step(m)
    try:
        step("creating the machine")
        m.set_status("Creating", step=step.name)
        cert_issued = engine == dockerengine.DEFAULT_ENGINE and _give_first_boot_files(m, driver, log)
        log("Creating machine...")
        driver.create()
        m.set_status("Creating", step=step.name)
        m.copy_client_certs()
        if driver.provisions:
            step("waiting for SSH")
            log("Waiting for SSH to be available...")
            with m.session() as session:
                m.set_status("Creating", step="provisioning")
                m.provision(log, step, session, cert_issued=cert_issued)
                if swarm:
                    step("forming the swarm")
                    if swarm_ready is not None:
                        swarm_ready()
                        cluster.check_join(swarm, store.load(swarm["Join"]), swarm["Join"])
                    cluster.form(m, lambda n: Machine.load(store, n, collaborators), session, log)
        m.set_status("Running")
    except BaseException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, KeyboardInterrupt):
            msg = "interrupted"
        m.set_status("Error", error=msg, step=step.name)
        raise
    log("Docker is up and running!" if driver.provisions else "Machine recorded.")
    log(f"To see how to connect your Docker Client to the engine running on this machine, run: dockyard env {name}")
    return m


def _give_first_boot_files(m: Machine, driver: Driver, log: Log) -> bool:
    """For a driver whose guest installs files on its first boot: issue the server certificate now and hand it
    the engine's files, so the engine starts during the boot and provisioning finds it running. True if given."""
    host = driver.first_boot_host() if driver.provisions else None
    if host is None:
        return False
    m.copy_client_certs()
    m.issue_server_cert(log)
    given = provision.first_boot_files(
        *host,
        m.name,
        m.engine_options,
        driver.engine_port(),
        m.path("ca.pem"),
        m.path("server.pem"),
        m.path("server-key.pem"),
        m.store.cache_dir,
    )
    if given is None:
        return False
    driver.set_first_boot(*given)
    return True


def remove(
    store: Store,
    name: str,
    force: bool,
    log: Log,
    *,
    keep_engine: bool = False,
    collaborators: Collaborators = DEFAULT_COLLABORATORS,
) -> None:
    """Delete what the driver made, then the local record. With force, driver errors do not stop removal.
    A host that outlives its machine (generic) has the engine taken off it first, unless keep_engine."""
    try:
        m = Machine(store, name, store.load(name), collaborators)
    except DockyardError:
        # A create killed before its first save leaves a bare directory; -f clears it.
        if not (force and os.path.isdir(store.machine_dir(name))):
            raise
        m = None
    try:
        if m is not None:
            m.driver.progress = log
            # a swarm node is drained and leaves first: its services move to the other nodes
            cluster.leave(m, store.names(), lambda n: Machine.load(store, n, collaborators), force, log)
    except Exception as e:
        if not force:
            raise DockyardError(f'Error removing host "{name}": {e}') from None
        log(f'Error taking "{name}" out of its swarm: {e} (removing it anyway, as -f was given)')
    try:
        if m is not None and not keep_engine and m.driver.name in HOST_OUTLIVES_MACHINE:
            m.uninstall_engine(log)
    except Exception as e:
        if not force:
            raise DockyardError(
                f'Error removing host "{name}": cannot take the engine off the host: {e} '
                "(--keep-engine leaves it there, -f removes the record anyway)"
            ) from None
        log(f'Error taking the engine off "{name}": {e} (removing the local record anyway, as -f was given)')
    try:
        if m is not None:
            m.driver.remove()
    except Exception as e:
        if not force:
            raise DockyardError(f'Error removing host "{name}": {e}') from None
        log(f'Error removing host "{name}": {e} (removing the local record anyway, as -f was given)')
    with store.lock():
        store.remove(name)
    log(f"Successfully removed {name}")


def list_machines(store: Store) -> list[str]:
    return sorted(store.names())
