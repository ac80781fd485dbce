"""Router, query helpers, host specs and config merging, as plain functions."""

import json

import pytest

from dockyard.engine.api.errors import http_status
from dockyard.engine.api.query import Filters, boolean, integer, parse_bool
from dockyard.engine.api.router import Router, version_less
from dockyard.engine.config import ConfigError, parse_config, registry_config
from dockyard.engine.errors import InvalidParameter, NotFound
from dockyard.engine.listeners import ListenerError, parse_host


def make_router():
    r = Router()
    r.add("GET", "/images/json", lambda req: "list")
    r.add("GET", "/images/{name:.*}/json", lambda req: "inspect")
    r.add("GET", "/containers/{id}/json", lambda req: "container")
    return r


@pytest.mark.parametrize(
    "path,version,rest",
    [
        ("/containers/abc/json", "1.50", "/containers/abc/json"),
        ("/v1.50/containers/abc/json", "1.50", "/containers/abc/json"),
        ("/v1.24/containers/abc/json", "1.24", "/containers/abc/json"),
        ("/v1.5/containers/abc/json", None, None),  # 1.5 < 1.24: too old
    ],
)
def test_version_prefix(path, version, rest):
    r = make_router()
    if version is None:
        with pytest.raises(InvalidParameter, match="too old"):
            r.resolve("GET", path)
        return
    route, params, got_version = r.resolve("GET", path)
    assert got_version == version and params == {"id": "abc"}


def test_too_new_message_is_exact():
    with pytest.raises(InvalidParameter) as err:
        make_router().resolve("GET", "/v1.51/images/json")
    assert err.value.message == "client version 1.51 is too new. Maximum supported API version is 1.50"
    assert http_status(err.value) == 400


def test_registration_order_and_custom_regex():
    r = make_router()
    assert r.resolve("GET", "/images/json")[0].handler(None) == "list"
    route, params, _ = r.resolve("GET", "/v1.50/images/reg:5000/a/b:tag/json")
    assert route.handler(None) == "inspect" and params == {"name": "reg:5000/a/b:tag"}
    with pytest.raises(NotFound, match="page not found"):
        r.resolve("GET", "/containers/a/b/json")  # {id} is one path segment
    with pytest.raises(NotFound, match="page not found"):
        r.resolve("POST", "/containers/abc/json")  # wrong method answers like an unknown path


def test_version_compare():
    assert version_less("1.5", "1.50") and version_less("1.49", "1.50")
    assert not version_less("1.50", "1.50") and not version_less("2.0", "1.50")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", False),
        ("0", False),
        ("no", False),
        ("False", False),
        ("NONE", False),
        (" false ", False),
        ("1", True),
        ("true", True),
        ("True", True),
        ("yes", True),
        ("anything", True),
    ],
)
def test_moby_booleans(text, expected):
    assert parse_bool(text) is expected
    assert boolean({"force": [text]}, "force") is expected


def test_boolean_and_integer_defaults():
    assert boolean({}, "force") is False and boolean({}, "force", True) is True
    assert integer({"tail": ["10"]}, "tail") == 10 and integer({}, "tail", -1) == -1
    with pytest.raises(InvalidParameter):
        integer({"tail": ["all"]}, "tail")


def test_filters_both_shapes():
    cli = Filters.from_json(json.dumps({"label": {"a=b": True, "c": True}, "status": {"running": True}}))
    py = Filters.from_json(json.dumps({"label": ["a=b", "c"], "status": ["running"]}))
    assert cli.as_dict() == py.as_dict() == {"label": ["a=b", "c"], "status": ["running"]}
    assert cli.match_labels({"a": "b", "c": "x"}) and not cli.match_labels({"a": "z", "c": "x"})
    assert cli.exact_match("status", "running") and not cli.exact_match("status", "exited")
    assert cli.exact_match("name", "anything")  # not filtered on
    cli.validate({"label", "status"})
    with pytest.raises(InvalidParameter, match="invalid filter 'status'"):
        cli.validate({"label"})
    assert not Filters.from_json("") and not Filters.from_json(None)
    with pytest.raises(InvalidParameter):
        Filters.from_json("{oops")
    with pytest.raises(InvalidParameter):
        Filters.from_json("[1, 2]")


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("unix:///run/x.sock", ("unix", "/run/x.sock", None, None)),
        ("unix://", ("unix", "/run/dockyard/engine.sock", None, None)),
        ("tcp://0.0.0.0:2376", ("tcp", None, "0.0.0.0", 2376)),
        ("tcp://127.0.0.1", ("tcp", None, "127.0.0.1", 2376)),
        ("tcp://:4243", ("tcp", None, "0.0.0.0", 4243)),
        ("tcp://[::1]:2376", ("tcp", None, "::1", 2376)),
    ],
)
def test_parse_host(spec, expected):
    h = parse_host(spec)
    assert (h.scheme, h.path, h.host, h.port) == expected


@pytest.mark.parametrize("spec", ["http://x", "tcp://h:99999", "unix://relative", "fd://", "tcp://h:1/p"])
def test_parse_host_rejects(spec):
    with pytest.raises(ListenerError):
        parse_host(spec)


def test_config_defaults_and_file_merge(tmp_path):
    f = tmp_path / "daemon.json"
    f.write_text(
        json.dumps(
            {
                "hosts": ["unix:///tmp/a.sock"],
                "tlsverify": True,
                "tlscacert": "/c/ca.pem",
                "labels": ["x=1"],
                "data-root": "/srv/dy",
                "opt": ["bip=172.18.0.1/16"],
                "insecure-registries": ["reg.local:5000", "10.0.0.0/8"],
            }
        )
    )
    cfg, _ = parse_config(["--config-file", str(f), "-H", "unix:///tmp/b.sock", "--opt", "mtu=1400"])
    assert cfg.hosts == ["unix:///tmp/b.sock"]  # flags override the file
    assert cfg.tlsverify is True and cfg.tlscacert == "/c/ca.pem"
    assert cfg.labels == ["x=1"] and cfg.data_root == "/srv/dy"
    assert cfg.opts == {"mtu": "1400"}
    assert cfg.exec_root == "/run/dockyard" and cfg.storage_driver == ""
    assert cfg.pidfile == "/run/dockyard/dockyard-engine.pid"
    reg = registry_config(cfg)
    assert "10.0.0.0/8" in reg["InsecureRegistryCIDRs"]
    assert reg["IndexConfigs"]["reg.local:5000"]["Secure"] is False


@pytest.mark.parametrize(
    "content,message",
    [
        ({"tlsverify": "yes"}, "must be true or false"),
        ({"labels": [1]}, "must be a list of strings"),
        ({"nope": 1}, "unknown keys: nope"),
        ({"registry-mirrors": ["ftp://x"]}, "invalid registry mirror"),
        ({"insecure-registries": ["http://r"]}, "should not contain '://'"),
    ],
)
def test_config_file_errors(tmp_path, content, message):
    f = tmp_path / "daemon.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        parse_config(["--config-file", str(f)])


def test_config_file_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse_config(["--config-file", str(tmp_path / "absent.json")])
