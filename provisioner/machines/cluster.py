"""Which machines form which swarm (config.json's HostOptions.SwarmOptions), and the swarm steps of the machine
flows: form (after create), leave (before rm), a reachable manager (env --swarm). The swarm itself is Docker's
swarm mode, reached over each machine's TLS API (provision.swarm); join tokens are read at join time, never stored.

SwarmOptions: IsSwarm, Master (ran swarm init), Manager (a manager: the master or joined with --swarm-manager),
Agent (a worker), Cluster (the name of the machine that initialized the swarm: the swarm's name in ls), Join (the
machine it joined through), ArbitraryFlags (--swarm-opt), ArbitraryJoinFlags (--swarm-join-opt).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dockyard.provisioner.core.errors import DockyardError, EngineUnreachable, UsageError
from dockyard.provisioner.provision import swarm

if TYPE_CHECKING:
    from dockyard.provisioner.core.ssh import SSHSession
    from dockyard.provisioner.machines.machine import Machine

Log = Callable[[str], None]
IPVS_CHECK = "test -d /sys/module/ip_vs || modprobe -n -q ip_vs 2>/dev/null"


def options(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config.get("HostOptions", {}).get("SwarmOptions") or {})


def column(config: Mapping[str, Any]) -> str:
    """ls's SWARM column: the swarm's name, with " (manager)" on its managers (Docker Machine's "(master)")."""
    so = options(config)
    if not so.get("IsSwarm") or not so.get("Cluster"):
        return ""
    return so["Cluster"] + (" (manager)" if so.get("Manager") else "")


def options_from_flags(
    *,
    swarm_flag: bool,
    master: bool,
    manager: bool,
    join: str | None,
    opts: Sequence[str],
    join_opts: Sequence[str],
    classic: Mapping[str, Any],
    engine: str,
    names: Sequence[str],
) -> dict[str, Any] | None:
    """SwarmOptions for `create`, or None when no swarm flag was given. Refuses what cannot work."""
    swarm.check_classic_flags(classic)
    if not (swarm_flag or master or manager or join or opts or join_opts):
        return None
    if engine != "docker":
        raise UsageError("swarm mode needs Docker Engine: add --engine docker (the dockyard engine has no swarm)")
    if master and join:
        raise UsageError("--swarm-master starts a new swarm; --swarm-join joins an existing one: choose one")
    if not master and not join:
        if not (swarm_flag and len(names) > 1):
            raise UsageError("say which swarm: --swarm-master (a new one) or --swarm-join MANAGER")
        master = True  # several new machines and no swarm to join: they form a new one (batch_options)
    if master:
        swarm.init_request("0.0.0.0", opts)  # refuses unknown --swarm-opt keys now, not after the machine exists
    if join_opts:
        swarm.join_request("0.0.0.0", "0.0.0.0", "", join_opts)
    return {
        "IsSwarm": True,
        "Master": master,
        "Manager": master or manager,
        "Agent": not (master or manager),
        "Join": join or "",
        "Cluster": "",  # set by check_join (a joining node) or create (the master: its own name)
        "ArbitraryFlags": list(opts),
        "ArbitraryJoinFlags": list(join_opts),
    }


def batch_options(so: Mapping[str, Any], names: Sequence[str], as_manager: bool = False) -> dict[str, dict[str, Any]]:
    """SwarmOptions per machine when several machines start a new swarm (create -n N / several names with
    --swarm-master, or --swarm and no --swarm-join), as Docker Machine users expect: the first machine initializes
    it, the others join it (as managers with --swarm-manager: as_manager, else as workers)."""
    if not so.get("Master") or not names:
        raise ValueError("batch_options is for a new swarm made by several machines")
    lead = names[0]
    out = {lead: dict(so, Master=True, Manager=True, Agent=False, Join="", Cluster=lead)}
    for name in names[1:]:
        out[name] = dict(
            so, Master=False, Manager=as_manager, Agent=not as_manager, Join=lead, Cluster=lead, ArbitraryFlags=[]
        )
    return out


class ManagerGate:
    """The machines of a batch that join a swarm its first machine starts are created alongside it and wait here,
    after provisioning and before joining, until that manager has initialized the swarm (or has failed)."""

    def __init__(self, manager: str) -> None:
        self.manager = manager
        self._done = threading.Event()
        self._error = ""

    def open(self, error: str = "") -> None:
        """The manager's create ended: the swarm is up (no error) or it never will be."""
        self._error = error
        self._done.set()

    @contextlib.contextmanager
    def leading(self) -> Iterator[None]:
        """Around the manager's create: opens the gate when it ends, with its error if it failed."""
        try:
            yield
        except BaseException as e:
            text = str(e).strip()
            self.open(text.splitlines()[0] if text else type(e).__name__)
            raise
        self.open()

    def wait(self) -> None:
        self._done.wait()
        if self._error:
            raise DockyardError(f'not joining: the swarm manager "{self.manager}" failed: {self._error}')


def check_join(so: dict[str, Any], manager_config: Mapping[str, Any], manager_name: str) -> None:
    """Before a machine is created to join manager_name: is that a manager of a swarm? Sets so["Cluster"]."""
    mso = options(manager_config)
    if manager_config.get("HostOptions", {}).get("Engine") != "docker" or not mso.get("Manager"):
        raise UsageError(f'"{manager_name}" is not a swarm manager made by dockyard (create it with --swarm-master)')
    so["Cluster"] = mso.get("Cluster") or manager_name


def api(m: Machine, timeout: float = 60.0) -> swarm.SwarmAPI:
    return swarm.SwarmAPI(m.url(), m.tls_files(), timeout)


def warn_without_ipvs(m: Machine, session: SSHSession, log: Log) -> None:
    """Swarm's routing mesh and service virtual IPs need the kernel's IPVS; say so when a node has none."""
    if session.run(IPVS_CHECK, sudo=True, check=False).exit_status != 0:
        log(
            f"WARNING: the kernel of {m.name} has no ip_vs (IPVS): swarm's routing mesh and service virtual IPs do "
            "not work on it; publish ports with mode=host and use --endpoint-mode dnsrr"
        )


def form(m: Machine, load: Callable[[str], Machine], session: SSHSession, log: Log) -> None:
    """After provisioning: swarm init (master) or join through the manager named in SwarmOptions.Join."""
    so = options(m.config)
    if not so.get("IsSwarm"):
        return
    warn_without_ipvs(m, session, log)
    if so.get("Master"):
        swarm.init(api(m), m.ip(), so.get("ArbitraryFlags", []), log)
        return
    manager = load(so["Join"])
    swarm.join(
        api(m), m.ip(), api(manager), manager.ip(), bool(so.get("Manager")), so.get("ArbitraryJoinFlags", []), log
    )


def managers_of(cluster: str, names: Iterable[str], load: Callable[[str], Machine]) -> list[Machine]:
    """The machines of the store that are managers of the swarm `cluster` (by config.json; reachable or not)."""
    found = []
    for name in names:
        try:
            other = load(name)
        except DockyardError:
            continue
        so = options(other.config)
        if so.get("IsSwarm") and so.get("Manager") and so.get("Cluster") == cluster:
            found.append(other)
    return found


def reachable_manager(
    m: Machine, names: Iterable[str], load: Callable[[str], Machine], exclude: str = ""
) -> Machine | None:
    """A manager of m's swarm whose engine answers as a swarm manager (m itself counts unless excluded)."""
    cluster = options(m.config).get("Cluster", "")
    candidates = ([m] if m.name != exclude and options(m.config).get("Manager") else []) + [
        x for x in managers_of(cluster, names, load) if x.name not in (m.name, exclude)
    ]
    for candidate in candidates:
        try:
            if api(candidate, timeout=5).info().get("ControlAvailable"):
                return candidate
        except DockyardError:
            continue
    return None


def leave(m: Machine, names: Iterable[str], load: Callable[[str], Machine], force: bool, log: Log) -> None:
    """Before rm: drain the node through another manager, leave, and drop it from the node list."""
    if not options(m.config).get("IsSwarm"):
        return
    try:
        node = api(m)
        node.info()
    except EngineUnreachable as e:
        raise DockyardError(f"cannot take {m.name} out of its swarm: {e}") from None
    manager = reachable_manager(m, names, load, exclude=m.name)
    swarm.remove_node(node, api(manager) if manager else None, force, log)


def manager_for_env(m: Machine, names: Iterable[str], load: Callable[[str], Machine]) -> Machine:
    """`env --swarm NAME`: a reachable manager of NAME's swarm."""
    so = options(m.config)
    if not so.get("IsSwarm"):
        raise UsageError(f'"{m.name}" is not part of a swarm')
    found = reachable_manager(m, names, load)
    if found is None:
        raise EngineUnreachable(f'no manager of the swarm "{so.get("Cluster")}" answers')
    return found


def join_existing(
    m: Machine, manager: str, as_manager: bool, join_opts: Sequence[str], load: Callable[[str], Machine], log: Log
) -> None:
    """`dockyard swarm join NAME --to MANAGER`: an existing --engine docker machine joins a swarm. dockerd is
    provisioned again first, without live-restore (swarm mode refuses it): running containers stop."""
    if m.engine != "docker":
        raise UsageError(f'"{m.name}" runs the dockyard engine; swarm mode needs a machine made with --engine docker')
    if options(m.config).get("IsSwarm"):
        raise UsageError(f'"{m.name}" is already in the swarm "{options(m.config).get("Cluster")}"')
    so = options_from_flags(
        swarm_flag=True,
        master=False,
        manager=as_manager,
        join=manager,
        opts=(),
        join_opts=join_opts,
        classic={},
        engine="docker",
        names=[m.name],
    )
    assert so is not None
    check_join(so, load(manager).config, manager)
    m.require_running()
    m.config.setdefault("HostOptions", {})["SwarmOptions"] = so
    try:
        with m.session() as session:
            m.provision(log, session=session)
            form(m, load, session, log)
    except BaseException:
        m.config["HostOptions"].pop("SwarmOptions", None)
        raise
    finally:
        m.save()


def leave_existing(m: Machine, names: Iterable[str], load: Callable[[str], Machine], force: bool, log: Log) -> None:
    """`dockyard swarm leave NAME`: drain, leave, drop from the node list; dockerd gets live-restore back."""
    if not options(m.config).get("IsSwarm"):
        raise UsageError(f'"{m.name}" is not part of a swarm')
    leave(m, names, load, force, log)
    m.config["HostOptions"].pop("SwarmOptions", None)
    m.save()
    with m.session() as session:
        m.provision(log, session=session)
