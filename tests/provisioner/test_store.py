"""Store: layout, permissions, locking, relative paths, name validation."""

import json
import multiprocessing
import os
import stat

import pytest

from dockyard.provisioner.core.errors import InvalidHostname, MachineAlreadyExists, MachineNotExist, StoreError
from dockyard.provisioner.core.store import Store, validate_name


def test_layout_and_permissions(tmp_path):
    s = Store(str(tmp_path / "st")).ensure()
    for d in (s.path, s.certs_dir, s.machines_dir, s.cache_dir):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_storage_path_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKYARD_STORAGE_PATH", str(tmp_path / "x"))
    assert Store().path == str(tmp_path / "x")


def test_save_load_roundtrip_and_relative_paths(tmp_path):
    s = Store(str(tmp_path / "st")).ensure()
    s.reserve("m1")
    key = os.path.join(s.machine_dir("m1"), "id_ed25519")
    s.save("m1", {"DriverName": "none", "Driver": {"SSHKeyPath": s.rel(key)}})
    cfg = s.load("m1")
    assert cfg["ConfigVersion"] == 3 and cfg["Name"] == "m1"
    assert cfg["Driver"]["SSHKeyPath"] == "machines/m1/id_ed25519"
    assert s.abs(cfg["Driver"]["SSHKeyPath"]) == key
    assert s.rel("/etc/passwd") == "/etc/passwd"
    # a moved store still resolves its paths
    os.rename(s.path, str(tmp_path / "moved"))
    s2 = Store(str(tmp_path / "moved"))
    assert s2.abs(s2.load("m1")["Driver"]["SSHKeyPath"]) == str(tmp_path / "moved/machines/m1/id_ed25519")


def test_reserve_twice_fails(tmp_path):
    s = Store(str(tmp_path / "st"))
    s.reserve("a")
    with pytest.raises(MachineAlreadyExists, match='Docker machine "a" already exists'):
        s.reserve("a")


def test_missing_machine_message(tmp_path):
    with pytest.raises(MachineNotExist, match='Docker machine "nope" does not exist'):
        Store(str(tmp_path)).load("nope")


def test_corrupt_config_is_a_store_error(tmp_path):
    s = Store(str(tmp_path)).ensure()
    s.reserve("bad")
    with open(os.path.join(s.machine_dir("bad"), "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        s.load("bad")


def test_future_config_version_refused(tmp_path):
    s = Store(str(tmp_path)).ensure()
    s.reserve("f")
    with open(os.path.join(s.machine_dir("f"), "config.json"), "w") as f:
        json.dump({"ConfigVersion": 99}, f)
    with pytest.raises(StoreError, match="from the future"):
        s.load("f")


@pytest.mark.parametrize("name", ["a", "web-1", "h1.example", "A9"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a/b", "a_b", "ä"])
def test_invalid_names(name):
    with pytest.raises(InvalidHostname, match="Allowed hostname chars are: 0-9a-zA-Z . -"):
        validate_name(name)


def test_remove(tmp_path):
    s = Store(str(tmp_path)).ensure()
    s.reserve("gone")
    s.save("gone", {})
    s.remove("gone")
    assert not s.exists("gone") and s.names() == []
    with pytest.raises(MachineNotExist):
        s.remove("gone")


def _reserve_in_child(path, name, q):
    try:
        Store(path).reserve(name)
        q.put("ok")
    except MachineAlreadyExists:
        q.put("exists")


def test_concurrent_reserve_exactly_one_wins(tmp_path):
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_reserve_in_child, args=(str(tmp_path), "race", q)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = sorted(q.get() for _ in procs)
    assert results.count("ok") == 1 and results.count("exists") == 5


def test_lock_times_out(tmp_path):
    s = Store(str(tmp_path)).ensure()
    with s.lock():
        pid = os.fork()
        if pid == 0:
            try:
                with Store(str(tmp_path)).lock(timeout=0.3):
                    os._exit(0)
            except StoreError:
                os._exit(7)
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 7
