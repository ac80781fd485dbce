"""The default seccomp program is compiled once per capability set (engine/runtime/spec.py): what a start
gets from the memo is exactly what compiling the default profile for its capabilities gives, per set."""

from __future__ import annotations

import base64

import pytest

from dockyard.engine.runtime import caps, seccomp, spec

pytestmark = pytest.mark.skipif(not seccomp.available(), reason="needs libseccomp")


def fresh(host_config):
    names = caps.effective_set(host_config.get("CapAdd"), host_config.get("CapDrop"), False)
    return base64.b64encode(seccomp.compile_bpf(seccomp.default_profile(), names)).decode("ascii")


@pytest.mark.parametrize(
    "host_config",
    [{}, {"CapAdd": ["SYS_ADMIN"]}, {"CapAdd": ["SYS_PTRACE"]}, {"CapDrop": ["ALL"]}, {"CapAdd": ["ALL"]}],
    ids=["default", "sys-admin", "sys-ptrace", "drop-all", "add-all"],
)
def test_memoized_program_is_the_compiled_one_for_those_capabilities(host_config):
    first = spec.seccomp_filter(host_config)
    assert first == fresh(host_config)
    assert spec.seccomp_filter(host_config) == first  # from the memo now


def test_capability_sets_never_share_a_program():
    plain, admin = spec.seccomp_filter({}), spec.seccomp_filter({"CapAdd": ["SYS_ADMIN"]})
    assert plain != admin
    assert spec.seccomp_filter({}) == plain and spec.seccomp_filter({"CapAdd": ["SYS_ADMIN"]}) == admin
