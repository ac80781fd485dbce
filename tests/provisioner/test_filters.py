"""ls --filter: parsing errors, OR within a key, AND across keys, regex names, labels."""

import pytest

from dockyard.provisioner.cli.filters import match, needs_state, parse_filters, swarm_master_name
from dockyard.provisioner.cli.tables import HostListItem
from dockyard.provisioner.core.errors import UsageError

MACHINES = [
    HostListItem(
        Name="web1",
        DriverName="qemu",
        State="Running",
        Swarm="web1 (master)",
        EngineOptions={"Labels": ["env=Prod", "tier=web"]},
    ),
    HostListItem(Name="web2", DriverName="qemu", State="Stopped", Swarm="web1", EngineOptions={"Labels": ["env=dev"]}),
    HostListItem(Name="db", DriverName="VirtualBox", State="Running", EngineOptions={"Labels": []}),
    HostListItem(Name="edge-web", DriverName="generic", State="Error", EngineOptions=None),
]


def names(values):
    filters = parse_filters(values)
    return [m.Name for m in MACHINES if match(m, filters)]


def test_parse_lowercases_keys_and_groups_values():
    assert parse_filters(["Driver=qemu", "STATE=running", "driver=generic", "label=a=b"]) == {
        "driver": ["qemu", "generic"],
        "state": ["running"],
        "label": ["a=b"],
    }
    assert parse_filters([]) == {}
    assert parse_filters(["name="]) == {"name": [""]}


def test_parse_errors_use_docker_machine_messages():
    with pytest.raises(UsageError, match="^Unsupported filter syntax$"):
        parse_filters(["driver"])
    with pytest.raises(UsageError, match="^Unsupported filter key 'colour'$"):
        parse_filters(["Colour=red"])
    with pytest.raises(UsageError, match="Invalid name filter '\\(web'"):
        parse_filters(["name=(web"])


def test_no_filters_match_everything():
    assert names([]) == ["web1", "web2", "db", "edge-web"]


def test_same_key_is_ored_different_keys_are_anded():
    assert names(["driver=qemu", "driver=generic"]) == ["web1", "web2", "edge-web"]
    assert names(["driver=qemu", "state=running"]) == ["web1"]
    assert names(["driver=qemu", "driver=virtualbox", "state=running"]) == ["web1", "db"]
    assert names(["driver=qemu", "state=error"]) == []


def test_driver_state_and_swarm_ignore_case():
    assert names(["driver=virtualbox"]) == ["db"]
    assert names(["state=RUNNING"]) == ["web1", "db"]
    assert names(["swarm=WEB1"]) == ["web1", "web2"]
    assert names(["swarm="]) == ["db", "edge-web"]  # machines outside any swarm, as in Docker Machine


def test_name_is_an_unanchored_regex():
    assert names(["name=web"]) == ["web1", "web2", "edge-web"]
    assert names(["name=^web"]) == ["web1", "web2"]
    assert names(["name=^web[0-9]$", "name=^db$"]) == ["web1", "web2", "db"]
    assert names(["name=Web"]) == []  # regexes are case-sensitive


def test_label_matches_key_exactly_and_value_in_any_case():
    assert names(["label=env=prod"]) == ["web1"]
    assert names(["label=env=prod", "label=env=dev"]) == ["web1", "web2"]
    assert names(["label=ENV=prod"]) == []
    assert names(["label=tier"]) == ["web1"]  # key alone: any value
    assert names(["label=env=prod", "driver=qemu", "state=stopped"]) == []


def test_explicit_labels_override_engine_options_and_dict_items_work():
    item = {"Name": "x", "DriverName": "none", "State": "Running", "Swarm": ""}
    assert match(item, parse_filters(["label=a=B"]), labels=["a=b", "c=d"])
    assert not match(item, parse_filters(["label=a=b"]), labels=[])
    assert match(item, parse_filters(["driver=NONE", "name=^x$"]))


def test_needs_state_and_swarm_master_name():
    assert needs_state(parse_filters(["state=running"]))
    assert not needs_state(parse_filters(["driver=qemu"]))
    assert swarm_master_name("m1 (master)") == "m1"
    assert swarm_master_name("m1") == "m1"
