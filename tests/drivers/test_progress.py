"""Drivers report progress through the channel the machine layer hands them, never to stdout directly."""

import pytest

from dockyard.drivers.base import POWER, Driver, State
from dockyard.provisioner.core.store import Store
from dockyard.provisioner.machines import machine


class Talkative(Driver):
    """Says something in every verb; records an engine, so nothing is provisioned."""

    name = "talkative"
    provisions = False
    capabilities = POWER

    def set_config_from_flags(self, options):
        self.config["IPAddress"] = "192.0.2.5"
        self.config["Running"] = True

    def create(self):
        self.progress("Booting the talkative VM...")

    def remove(self):
        self.progress("Deleting the talkative VM...")

    def state(self):
        return State.RUNNING if self.config.get("Running") else State.STOPPED

    def ip(self):
        return self.config["IPAddress"]

    def start(self):
        self.config["Running"] = True

    def stop(self):
        self.progress("The VM did not power off in time; killing it.")
        self.config["Running"] = False

    def kill(self):
        self.config["Running"] = False

    def restart(self):
        pass


@pytest.fixture
def collaborators():
    return machine.Collaborators(driver_class=lambda name: Talkative)


def test_create_hands_the_driver_the_progress_channel(tmp_path, capsys, collaborators):
    store, log, progress = Store(str(tmp_path / "store")), [], []
    opts = machine.default_engine_options()
    machine.create(store, "m1", "talkative", {}, opts, [], log.append, progress.append, collaborators=collaborators)
    assert progress == ["Booting the talkative VM..."]
    assert "Booting the talkative VM..." not in log
    assert capsys.readouterr().out == ""  # nothing printed behind the channel's back


def test_without_a_separate_channel_progress_joins_the_log(tmp_path, collaborators):
    store, log = Store(str(tmp_path / "store")), []
    machine.create(
        store, "m1", "talkative", {}, machine.default_engine_options(), [], log.append, collaborators=collaborators
    )
    assert log.index("Creating machine...") < log.index("Booting the talkative VM...")


def test_verbs_send_the_drivers_lines_where_theirs_go(tmp_path, collaborators) -> None:
    store = Store(str(tmp_path / "store"))
    opts = machine.default_engine_options()
    machine.create(store, "m1", "talkative", {}, opts, [], lambda line: None, collaborators=collaborators)
    said: list[str] = []
    machine.Machine.load(store, "m1", collaborators).stop(said.append)
    assert said == ['Stopping "m1"...', "The VM did not power off in time; killing it.", 'Machine "m1" was stopped.']
    removed: list[str] = []
    machine.remove(store, "m1", False, removed.append, collaborators=collaborators)
    assert removed == ["Deleting the talkative VM...", "Successfully removed m1"]
