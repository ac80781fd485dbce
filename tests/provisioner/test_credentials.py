"""Credentials: keyring (a file-backed test backend), the opt-in 0600 file, env vars, and `dockyard creds`."""

import json
import os
import stat
import subprocess
import sys

import keyring
import pytest
from keyring.backends import chainer, fail

from dockyard.provisioner.core import credentials
from dockyard.provisioner.core.credentials import Field
from tests.integration.conftest import ROOT, clean_env
from tests.provisioner.file_keyring import FileKeyring

FIELDS = [
    Field("access_key", "T_ACCESS", "x_access_key"),
    Field("secret_key", "T_SECRET", "x_secret_key"),
    Field("token", "T_TOKEN", "x_token", required=False),
]


@pytest.fixture
def test_keyring(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKYARD_TEST_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.delenv(credentials.FILE_ENV, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    yield tmp_path / "keyring.json"
    keyring.set_keyring(previous)


@pytest.fixture
def no_keyring(monkeypatch):
    monkeypatch.delenv(credentials.FILE_ENV, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


def test_fail_backend_and_empty_chainer_are_detected(no_keyring, monkeypatch):
    ok, name = credentials.keyring_status()
    assert not ok and name == "keyring.backends.fail.Keyring"
    with pytest.raises(credentials.NoKeyringBackend) as e:
        credentials.open_store(None, "amazonec2", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    msg = str(e.value)
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in msg and credentials.FILE_ENV in msg and "0600" in msg
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [])
    keyring.set_keyring(chainer.ChainerBackend())
    ok, name = credentials.keyring_status()
    assert not ok and name.endswith("with no backends")


def test_keyring_store_keeps_entries_and_an_index(test_keyring):
    ok, _ = credentials.keyring_status()
    assert ok
    store = credentials.open_store()
    assert store.kind == "keyring"
    store.set("amazonec2:default", {"access_key": "AK", "secret_key": "S3CR3T"})
    store.set("digitalocean:work", {"access_token": "TOK"})
    assert store.refs() == ["amazonec2:default", "digitalocean:work"]
    assert store.get("amazonec2:default")["secret_key"] == "S3CR3T"
    raw = json.loads(test_keyring.read_text())["dockyard"]
    assert json.loads(raw["amazonec2:default"])["secret_key"] == "S3CR3T"
    assert store.delete("amazonec2:default") and not store.delete("amazonec2:default")
    assert store.refs() == ["digitalocean:work"] and store.get("amazonec2:default") is None


def test_file_store_is_0600_and_refuses_open_permissions(tmp_path, no_keyring, monkeypatch):
    path = tmp_path / "sub" / "creds.json"
    monkeypatch.setenv(credentials.FILE_ENV, str(path))
    store = credentials.open_store()  # the explicit opt-in works without a keyring
    assert store.kind == "file"
    store.set("linode:default", {"token": "LT"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.get("linode:default") == {"token": "LT"} and store.refs() == ["linode:default"]
    os.chmod(path, 0o644)
    with pytest.raises(credentials.CredentialsError, match="chmod 600"):
        store.get("linode:default")


def test_choose_env_keyring_or_stored(test_keyring):
    env = {"T_ACCESS": "AK", "T_SECRET": "SK"}
    # Values equal to the env vars: read the environment at every call, store nothing.
    source, values, store = credentials.choose("x", "default", FIELDS, {"access_key": "AK", "secret_key": "SK"}, env)
    assert (source, store) == ("env", None) and values == {"access_key": "AK", "secret_key": "SK"}
    # Given as flags: to be stored in the keyring once they work.
    source, values, store = credentials.choose("x", "default", FIELDS, {"access_key": "A2", "secret_key": "S2"}, {})
    assert source == "keyring" and store.kind == "keyring" and values["secret_key"] == "S2"
    with pytest.raises(credentials.CredentialsError, match="dockyard creds set x:default"):
        credentials.choose("x", "default", FIELDS, {}, {})
    with pytest.raises(credentials.CredentialsError, match="T_SECRET"):
        credentials.choose("x", "default", FIELDS, {"access_key": "A2"}, {})
    store.set("x:default", {"access_key": "A2", "secret_key": "S2"})
    assert credentials.choose("x", "default", FIELDS, {}, {})[:2] == (
        "keyring",
        {"access_key": "A2", "secret_key": "S2"},
    )


def test_resolve_reads_the_reference_at_every_call(test_keyring, tmp_path):
    ref = credentials.reference("env", "x", "default")
    assert ref == {"CredentialRef": "x:default", "CredentialSource": "env"}
    assert credentials.resolve(ref, "x", FIELDS, {"T_ACCESS": "a", "T_SECRET": "b"}) == {
        "access_key": "a",
        "secret_key": "b",
    }
    with pytest.raises(credentials.CredentialsError, match="export T_SECRET"):
        credentials.resolve(ref, "x", FIELDS, {"T_ACCESS": "a"})
    ref = credentials.reference("keyring", "x", "work")
    with pytest.raises(credentials.CredentialsError, match='"x:work" not found'):
        credentials.resolve(ref, "x", FIELDS, {})
    credentials.open_store().set("x:work", {"access_key": "a", "secret_key": "b"})
    assert credentials.resolve(ref, "x", FIELDS, {})["secret_key"] == "b"
    fref = credentials.reference("file", "x", "default", str(tmp_path / "c.json"))
    credentials.FileStore(tmp_path / "c.json").set("x:default", {"access_key": "f", "secret_key": "g"})
    assert credentials.resolve(fref, "x", FIELDS, {})["access_key"] == "f"


def _cli(store, *args, env=None, input=None):
    return subprocess.run(
        [sys.executable, "-m", "dockyard", "--storage-path", str(store), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(env),
        input=input,
        timeout=120,
    )


def test_creds_cli_set_ls_rm_never_prints_secrets(tmp_path):
    env = {
        "PYTHON_KEYRING_BACKEND": "tests.provisioner.file_keyring.FileKeyring",
        "DOCKYARD_TEST_KEYRING": str(tmp_path / "kr.json"),
    }
    p = _cli(tmp_path / "store", "creds", "set", "amazonec2:work", env=env, input="AKIAEXAMPLE\nTOPSECRET\n\n")
    assert p.returncode == 0, p.stderr
    assert "TOPSECRET" not in p.stdout + p.stderr
    p = _cli(
        tmp_path / "store",
        "creds",
        "set",
        "digitalocean",
        "--from-env",
        env=dict(env, DIGITALOCEAN_ACCESS_TOKEN="dop_secret"),
    )
    assert p.returncode == 0, p.stderr
    p = _cli(tmp_path / "store", "creds", "ls", env=env)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "BACKEND", "FIELDS"]
    assert lines[1].split() == ["amazonec2:work", "keyring", "access_key,secret_key"]
    assert lines[2].split() == ["digitalocean:default", "keyring", "access_token"]
    assert "TOPSECRET" not in p.stdout and "dop_secret" not in p.stdout
    p = _cli(tmp_path / "store", "creds", "rm", "amazonec2:work", env=env)
    assert p.returncode == 0 and "amazonec2:work" not in _cli(tmp_path / "store", "creds", "ls", env=env).stdout
    p = _cli(tmp_path / "store", "creds", "rm", "amazonec2:work", env=env)
    assert p.returncode == 1 and "not stored: amazonec2:work" in p.stderr
    p = _cli(tmp_path / "store", "creds", "set", "generic", env=env)
    assert p.returncode == 1 and "takes no stored credentials" in p.stderr


def test_creds_cli_without_keyring_says_what_to_do(tmp_path):
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    p = _cli(tmp_path / "store", "creds", "ls", env=env)
    assert p.returncode == 1 and "No working keyring backend" in p.stderr
    assert credentials.FILE_ENV in p.stderr and "Traceback" not in p.stderr
    p = _cli(
        tmp_path / "store",
        "creds",
        "set",
        "linode",
        "--creds-file",
        str(tmp_path / "c.json"),
        env=env,
        input="LINODETOKEN\n",
    )
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "c.json").st_mode) == 0o600
    p = _cli(tmp_path / "store", "creds", "ls", env=dict(env, DOCKYARD_CREDENTIALS_FILE=str(tmp_path / "c.json")))
    assert "linode:default" in p.stdout and "file" in p.stdout and "LINODETOKEN" not in p.stdout
