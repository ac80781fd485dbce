"""Gathering `ls` rows: every machine's state, URL and engine version, concurrently, under one deadline."""

import os
import threading
import time

from dockyard.drivers.base import State
from dockyard.provisioner.cli.tables import HostListItem, go_duration
from dockyard.provisioner.core import engine_client
from dockyard.provisioner.core.errors import CertError, DockyardError
from dockyard.provisioner.machines import cluster
from dockyard.provisioner.machines.machine import Machine


def _cert_problem(m):
    if m.cert_matches_ip() is False:
        return (
            f"IP changed to {m.ip()}, not in the server certificate: "
            f"run 'dockyard provision {m.name}' or 'dockyard regenerate-certs {m.name}'"
        )
    return ""


def stored_item(store, name):
    """A row with only what config.json knows (name, driver, labels): for filtering before querying."""
    try:
        config = store.load(name)
    except DockyardError:
        return HostListItem(Name=name, DriverName="not found", State=str(State.ERROR))
    options = config.get("HostOptions", {}).get("EngineOptions", {})
    return HostListItem(
        Name=name, DriverName=config.get("DriverName", ""), EngineOptions=options, Swarm=cluster.column(config)
    )


def _row(store, name, timeout, docker_host, builds=None):
    """One row; raises nothing (errors go into the row). builds: where the build (GitCommit) each dockyard
    engine reports is put, by machine name (engines that say they are not dockyard's, e.g. dockerd, are skipped)."""
    try:
        m = Machine.load(store, name)
    except DockyardError as e:
        return HostListItem(Name=name, DriverName="not found", State=str(State.ERROR), Error=str(e).replace("\n", " "))
    item = HostListItem(Name=name, DriverName=m.config.get("DriverName", ""), Active="-")
    item.EngineOptions = m.engine_options
    item.Swarm = cluster.column(m.config)
    started = time.monotonic()
    try:
        state = m.state()
        item.State = str(state)
        if state == State.ERROR:
            item.Error = m.error_text()
            item.Active = ""
            return item
        if state != State.RUNNING:
            return item
        item.URL = m.url()
        item.Active = "*" if item.URL and item.URL == docker_host else "-"
        problem = _cert_problem(m)
        if problem:
            item.Error, item.DockerVersion = problem, "Unknown"
            return item
        try:
            v = engine_client.version(item.URL, m.tls_files(), timeout=timeout)
            item.DockerVersion = "v" + str(v.get("Version", "Unknown"))
            if builds is not None and (v.get("Platform") or {}).get("Name") == "dockyard engine":
                builds[name] = str(v.get("GitCommit", ""))
        except CertError as e:
            item.DockerVersion, item.Error = "Unknown", str(e)
        except DockyardError as e:
            item.DockerVersion, item.Error = "Unknown", str(e)
    except DockyardError as e:
        item.State, item.Error, item.Active = str(State.ERROR), str(e).replace("\n", " "), ""
    except Exception as e:  # a broken driver must not break ls for the other machines
        item.State, item.Error, item.Active = str(State.ERROR), f"{type(e).__name__}: {e}", ""
    item.ResponseTime = go_duration(time.monotonic() - started)
    return item


def gather(store, names, timeout, docker_host=None, builds=None):
    """Rows for names, in the given order. Each row not done by the deadline is a Timeout row.
    builds, when given, receives the engine build of each dockyard-engine machine that answered (see _row)."""
    docker_host = os.environ.get("DOCKER_HOST", "") if docker_host is None else docker_host
    results = {}
    lock = threading.Lock()

    def work(n):
        # The request may outlive the deadline: a host that is still silent then is a Timeout row.
        r = _row(store, n, timeout + 1, docker_host, builds)
        with lock:
            results[n] = r

    # Daemon threads: a host that hangs past the deadline must not keep the CLI from exiting.
    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    rows = []
    with lock:
        for n in names:
            if n in results:
                rows.append(results[n])
            else:
                driver = ""
                try:
                    driver = store.load(n).get("DriverName", "")
                except DockyardError:
                    pass
                rows.append(
                    HostListItem(Name=n, DriverName=driver, State=str(State.TIMEOUT), ResponseTime=go_duration(timeout))
                )
    return rows


def outdated_engines(builds, current_build):
    """Names whose dockyard engine is not the build this dockyard ships ("dev": an engine run from a source tree,
    never flagged). Builds are the short source digests the engines report as GitCommit."""
    return sorted(n for n, b in builds.items() if b and b != "dev" and b != current_build[: len(b)])


def outdated_warning(names):
    """The one stderr line ls prints about them."""
    return (
        f"Warning: the engine on {', '.join(names)} is older than this dockyard's: "
        f"run 'dockyard upgrade {' '.join(names)}'"
    )
