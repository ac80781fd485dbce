"""create of several machines into a new swarm (create -n N --engine docker --swarm / --swarm-master): the first
machine initializes it, the others are created alongside it and join it once it is up."""

import json
import os
import threading

import pytest

from dockyard.provisioner.core.errors import DockyardError, UsageError
from dockyard.provisioner.machines import batch, cluster
from tests.integration.conftest import Dockyard


class DockerDockyard(Dockyard):
    """The runner without the fixture's --engine-opt registry-pull=local, which dockerd does not know."""

    def argv(self, *args):
        argv = super().argv(*args)
        if "registry-pull=local" not in argv:
            return argv
        i = argv.index("registry-pull=local")
        return argv[: i - 1] + argv[i + 1 :]


COMMON = dict(opts=("task-history-limit=3",), join_opts=(), classic={}, engine="docker")


def test_several_machines_with_swarm_start_a_new_swarm_led_by_the_first():
    names = ["n-1", "n-2", "n-3"]
    for flags in (dict(swarm_flag=True, master=False), dict(swarm_flag=False, master=True)):
        so = cluster.options_from_flags(manager=False, join=None, names=names, **flags, **COMMON)
        assert so and so["Master"]
        per = cluster.batch_options(so, names)
        assert per["n-1"]["Master"] and per["n-1"]["Manager"] and per["n-1"]["Cluster"] == "n-1"
        assert per["n-1"]["ArbitraryFlags"] == ["task-history-limit=3"]
        for name in ("n-2", "n-3"):
            assert per[name]["Join"] == "n-1" and per[name]["Cluster"] == "n-1"
            assert per[name]["Agent"] and not per[name]["Manager"] and not per[name]["Master"]
            assert per[name]["ArbitraryFlags"] == []
    managers = cluster.batch_options(so, names, as_manager=True)
    assert all(managers[n]["Manager"] and not managers[n]["Agent"] for n in names)
    # one machine still has to say which swarm
    with pytest.raises(UsageError, match="say which swarm"):
        cluster.options_from_flags(swarm_flag=True, master=False, manager=False, join=None, names=["x"], **COMMON)


def test_manager_gate_passes_the_managers_failure_on():
    gate = cluster.ManagerGate("m")
    with pytest.raises(RuntimeError):
        with gate.leading():
            raise RuntimeError("no SSH\nmore")
    with pytest.raises(DockyardError, match='swarm manager "m" failed: no SSH$'):
        gate.wait()
    ok = cluster.ManagerGate("m")
    with ok.leading():
        pass
    ok.wait()


def test_the_lead_runs_outside_the_limit_so_waiting_machines_cannot_starve_it():
    # limit 1: without the exemption only one action runs at a time and each waits for the other for ever
    started = {n: threading.Event() for n in ("lead", "a")}
    seen = []

    def action(name, log):
        started[name].set()
        other = "a" if name == "lead" else "lead"
        if not started[other].wait(20):
            raise AssertionError(f"{name} ran alone")
        seen.append(name)

    run = batch.Batch(["a", "lead"], action, lambda line: None, limit=1, lead="lead")
    assert run.run() == {} and sorted(seen) == ["a", "lead"]


def test_cli_create_n_with_swarm_records_one_manager_and_its_workers(tmp_path):
    dy = DockerDockyard(tmp_path / "store")
    url = "tcp://127.0.0.1:2376"
    p = dy("create", "-d", "none", "--url", url, "--engine", "docker", "--swarm", "-n", "3", "n")
    assert "Created 3 of 3 machines" in p.stdout
    so = {
        n: json.load(open(os.path.join(dy.store, "machines", n, "config.json")))["HostOptions"]["SwarmOptions"]
        for n in ("n-1", "n-2", "n-3")
    }
    assert so["n-1"]["Master"] and so["n-2"]["Join"] == "n-1" and so["n-3"]["Join"] == "n-1"
    rows = {r.split()[0]: r for r in dy("ls").stdout.splitlines()[1:]}
    assert "n-1 (manager)" in rows["n-1"] and " n-1 " in rows["n-2"] and "(manager)" not in rows["n-3"]
    p = dy("create", "-d", "none", "--url", url, "--engine", "docker", "--swarm", "solo", check=False)
    assert p.returncode != 0 and "say which swarm" in p.stderr
