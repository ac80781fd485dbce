"""The generic `libcloud` driver (with libcloud's in-memory dummy provider: no network at all) and the
flag sets of every cloud driver."""

import json

import keyring
import pytest

from tests.drivers.cloud_fakes import loopback_only, make_driver
from tests.provisioner.file_keyring import FileKeyring

pytest.importorskip("libcloud")

from dockyard.drivers import registry  # noqa: E402
from dockyard.drivers.cloud.generic_libcloud import LibcloudDriver, parse_options  # noqa: E402
from dockyard.provisioner.core.errors import DriverError, PreCreateCheckError  # noqa: E402

CLOUDS = ["amazonec2", "azure", "digitalocean", "exoscale", "google", "libcloud", "linode", "openstack", "vultr"]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    loopback_only(monkeypatch)


@pytest.fixture
def test_keyring(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKYARD_TEST_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.delenv("DOCKYARD_CREDENTIALS_FILE", raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    yield tmp_path / "keyring.json"
    keyring.set_keyring(previous)


def test_every_cloud_driver_is_registered_with_the_common_flags():
    assert set(CLOUDS) <= set(registry.names())
    for name in CLOUDS:
        flags = {f.name: f for f in registry.get(name).flags}
        for common in ("ssh-user", "ssh-port", "open-port", "source-cidr", "ssh-timeout", "account"):
            assert f"{name}-{common}" in flags, (name, common)
        assert f"{name}-endpoint" in flags or name == "openstack"
    ec2 = {f.name: f for f in registry.get("amazonec2").flags}
    assert ec2["amazonec2-access-key"].envvar == "AWS_ACCESS_KEY_ID"
    assert ec2["amazonec2-secret-key"].envvar == "AWS_SECRET_ACCESS_KEY"
    assert ec2["amazonec2-region"].envvar == "AWS_DEFAULT_REGION"
    do = {f.name: f for f in registry.get("digitalocean").flags}
    assert do["digitalocean-access-token"].envvar == "DIGITALOCEAN_ACCESS_TOKEN"
    assert do["digitalocean-image"].default == "ubuntu-24-04-x64"


def test_options_parsing():
    assert parse_options(["region=par1", "key=abc=def"]) == {"region": "par1", "key": "abc=def"}
    with pytest.raises(DriverError, match="KEY=VALUE"):
        parse_options(["novalue"])


def test_secret_options_go_to_the_keyring_and_clear_error_without_key_support(test_keyring, tmp_path):
    d = make_driver(
        LibcloudDriver,
        tmp_path,
        libcloud_provider="dummy",
        libcloud_size="1",
        libcloud_image="1",
        libcloud_option=("key=not-a-number-secret", "region=nowhere"),
    )
    config = json.dumps(d.to_config())
    assert "not-a-number-secret" not in config and d.config["Options"] == {"region": "nowhere"}
    with pytest.raises(PreCreateCheckError, match="unexpected keyword argument 'region'"):
        d.pre_create_check()  # the dummy provider takes no region: said in one line
    d = make_driver(
        LibcloudDriver,
        tmp_path,
        libcloud_provider="dummy",
        libcloud_size="1",
        libcloud_image="1",
        libcloud_option=("key=not-a-number-secret",),
    )
    d.pre_create_check()
    assert d.config["CredentialRef"] == "libcloud-dummy:default" and d.config["CredentialSource"] == "keyring"
    stored = json.loads(json.loads(test_keyring.read_text())["dockyard"]["libcloud-dummy:default"])
    assert stored == {"key": "not-a-number-secret"}
    with pytest.raises(DriverError, match='provider "dummy" cannot put an SSH key'):
        d.create()
    bad = make_driver(
        LibcloudDriver,
        tmp_path,
        libcloud_provider="dummy",
        libcloud_size="nope",
        libcloud_image="1",
        libcloud_option=("key=x",),
    )
    with pytest.raises(PreCreateCheckError, match='size "nope" not found'):
        bad.pre_create_check()
    unknown = make_driver(
        LibcloudDriver, tmp_path, libcloud_provider="nosuchcloud", libcloud_size="1", libcloud_image="1"
    )
    with pytest.raises(PreCreateCheckError, match="nosuchcloud"):
        unknown.pre_create_check()


def test_a_403_quota_answer_is_a_quota_error_not_refused_credentials():
    from libcloud.common.exceptions import BaseHTTPError

    from dockyard.drivers.cloud.errors import CloudAuthError, CloudQuotaError, translate

    quota = translate("openstack", "creating the server", BaseHTTPError(403, "Quota exceeded for instances"))
    assert isinstance(quota, CloudQuotaError) and "quota or rate limit reached" in str(quota)
    for text in ("Forbidden", "Insufficient privileges"):
        denied = translate("openstack", "listing keys", BaseHTTPError(403, text))
        assert isinstance(denied, CloudAuthError) and "refused the credentials" in str(denied)
