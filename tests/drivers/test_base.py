"""The driver interface: abstract where every driver must act, declared capabilities, settings from flags."""

import dataclasses

import pytest

from dockyard.drivers import registry
from dockyard.drivers.base import POWER, Capability, Driver, Flag, Settings, State, flag_values, setting
from dockyard.drivers.generic import GenericDriver
from dockyard.drivers.none import NoneDriver
from dockyard.provisioner.core.errors import DriverError, NotSupported


class Minimal(Driver):
    name = "minimal"

    def set_config_from_flags(self, options):
        pass

    def create(self):
        pass

    def remove(self):
        pass

    def state(self):
        return State.STOPPED

    def ip(self):
        return "192.0.2.1"


def test_a_driver_without_the_required_methods_cannot_be_made(tmp_path):
    class NoState(Driver):
        name = "nostate"

        def set_config_from_flags(self, options):
            pass

        def create(self):
            pass

        def remove(self):
            pass

        def ip(self):
            return ""

    with pytest.raises(TypeError, match="state"):
        NoState("m", str(tmp_path))  # type: ignore[abstract]


@pytest.mark.parametrize("verb", ["start", "stop", "kill", "restart", "resize"])
def test_undeclared_power_verbs_answer_docker_machines_not_supported(tmp_path, verb):
    d = Minimal("m", str(tmp_path))
    assert not d.supports(Capability(verb))
    with pytest.raises(NotSupported) as e:
        getattr(d, verb)()
    assert str(e.value) == f'Driver "minimal" does not support "{verb}"'


def test_generic_declares_only_restart(tmp_path):
    d = GenericDriver("g", str(tmp_path))
    assert d.capabilities == {Capability.RESTART}
    with pytest.raises(NotSupported, match='Driver "generic" does not support "stop"'):
        d.stop()


def test_declaration_and_methods_must_agree():
    with pytest.raises(TypeError, match="does not implement stop"):

        class Claims(Minimal):
            capabilities = frozenset({Capability.STOP})

    with pytest.raises(TypeError, match="implements kill"):

        class Hides(Minimal):
            def kill(self):
                pass


def test_every_builtin_driver_is_concrete_and_declares_its_verbs(tmp_path):
    for name in registry.builtin_names():
        cls = registry.get(name)
        cls("m", str(tmp_path))  # abstract methods left would raise TypeError
        if name in ("none", "generic"):
            assert cls.capabilities <= {Capability.RESTART}
        else:
            # the local VM drivers also resize (dockyard set); the cloud drivers only power their nodes
            extra = {Capability.RESIZE} if name in ("qemu", "virtualbox") else set()
            assert cls.capabilities == POWER | extra, name


def test_progress_goes_to_the_channel_given(tmp_path):
    said = []
    d = Minimal("m", str(tmp_path), progress=said.append)
    d.progress("hello")
    assert said == ["hello"]


def test_flag_values_apply_each_declared_default_once():
    flags = [
        Flag("x-size", "size", default=3, type=int),
        Flag("x-name", "name", default="n"),
        Flag("x-on", "on", is_flag=True),
        Flag("x-port", "ports", multiple=True, default=("22",)),
    ]
    assert flag_values(flags, {}) == {"x_size": 3, "x_name": "n", "x_on": False, "x_port": ["22"]}
    assert flag_values(flags, {"x_size": 5, "x_name": "", "x_on": True, "x_port": ("1", "2")}) == {
        "x_size": 5,
        "x_name": "n",
        "x_on": True,
        "x_port": ["1", "2"],
    }


def test_settings_keep_their_declared_config_order() -> None:
    @dataclasses.dataclass
    class S(Settings):
        b: int = setting("Bee", flag="x_b")
        a: str = setting("Aye", flag="x_a")
        fixed: str = setting("Fixed")

    s = S.from_flags({"x_a": "A", "x_b": 2}, fixed="F")
    assert list(s.to_config().items()) == [("Bee", 2), ("Aye", "A"), ("Fixed", "F")]


def test_none_and_generic_settings_validate(tmp_path):
    with pytest.raises(DriverError, match="--url option is required"):
        NoneDriver("n", str(tmp_path)).set_config_from_flags({})
    with pytest.raises(DriverError, match="requires the --generic-ip-address"):
        GenericDriver("g", str(tmp_path)).set_config_from_flags({})
    g = GenericDriver("g", str(tmp_path))
    g.set_config_from_flags({"generic_ip_address": "192.0.2.9"})
    assert g.config == {
        "IPAddress": "192.0.2.9",
        "SSHUser": "root",
        "SSHPort": 22,
        "EnginePort": 2376,
        "UserSSHKey": "",
    }
