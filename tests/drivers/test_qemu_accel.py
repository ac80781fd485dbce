"""Choosing KVM or TCG: the device check, the decision, the per-boot cache, and the boot check itself."""

import json
import shutil

import pytest

from dockyard.drivers.qemu import accel
from dockyard.provisioner.core.errors import PreCreateCheckError


def must_not_probe():
    raise AssertionError("the probe must not run")


def test_tcg_never_probes():
    assert accel.choose("tcg", must_not_probe) == ("tcg", None)


def test_auto_falls_back_to_tcg_with_a_one_line_warning():
    chosen, warning = accel.choose("auto", lambda: accel.Probe(False, "a test kernel failed under KVM (exit -6)"))
    assert chosen == "tcg"
    assert "\n" not in warning and "a test kernel failed under KVM" in warning and "TCG" in warning


def test_auto_uses_working_kvm():
    assert accel.choose("auto", lambda: accel.Probe(True, "booted")) == ("kvm", None)


def test_explicit_kvm_that_does_not_work_is_a_pre_create_error():
    with pytest.raises(PreCreateCheckError, match="--qemu-accel kvm was asked for, but KVM is not usable: nope"):
        accel.choose("kvm", lambda: accel.Probe(False, "nope"))


def test_device_check_missing_device(tmp_path):
    r = accel.device_check(str(tmp_path / "kvm"))
    assert not r.usable and "does not exist" in r.reason


def test_device_check_device_that_is_not_kvm():
    r = accel.device_check("/dev/null")  # opens read-write, but the KVM ioctl fails
    assert not r.usable and "KVM_GET_API_VERSION" in r.reason


def test_probe_result_is_cached_per_boot(tmp_path):
    first = accel.probe("/usr/bin/qemu-system-x86_64", "", str(tmp_path), device=str(tmp_path / "nokvm"))
    assert not first.usable
    cache = json.loads((tmp_path / accel.CACHE_FILE).read_text())
    assert cache["key"]["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    # A cached answer for the same key is used as is, without probing again.
    cache["result"]["reason"] = "from the cache"
    (tmp_path / accel.CACHE_FILE).write_text(json.dumps(cache))
    again = accel.probe("/usr/bin/qemu-system-x86_64", "", str(tmp_path), device=str(tmp_path / "nokvm"))
    assert again.reason == "from the cache"
    # Another kernel (or qemu, or boot) is another key: probed afresh.
    other = accel.probe(
        "/usr/bin/qemu-system-x86_64", "/nonexistent/vmlinuz", str(tmp_path), device=str(tmp_path / "nokvm")
    )
    assert other.reason != "from the cache"


def test_boot_check_reports_a_qemu_that_cannot_run(tmp_path):
    r = accel.boot_check(str(tmp_path / "no-qemu"), "/nonexistent/vmlinuz", timeout=5)
    assert not r.usable and "cannot run" in r.reason


@pytest.mark.vm
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86 (.ci/vm-deps.sh)")
def test_boot_check_recognises_a_kernel_that_boots(guest_image):
    """The same check under TCG (which works here) must say "usable": proves the success test is right."""
    r = accel.boot_check(shutil.which("qemu-system-x86_64"), guest_image.kernel, timeout=120, accel="tcg")
    assert r.usable, r.reason


@pytest.fixture(scope="module")
def guest_image():
    from tests.integration.test_qemu_vm import ensure_guest_image

    return ensure_guest_image()


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86 (.ci/vm-deps.sh)")
def test_firmware_check_without_a_kernel():
    """A cloud image brings no kernel to test-boot: the firmware alone is run under the accelerator."""
    r = accel.firmware_check(shutil.which("qemu-system-x86_64"), timeout=60, accel="tcg")
    assert r.usable, r.reason
    failing = accel.firmware_check("/bin/false", timeout=5, accel="tcg")
    assert not failing.usable and "failed under TCG" in failing.reason
    missing = accel.firmware_check("/nonexistent/qemu", timeout=5)
    assert not missing.usable and "cannot run" in missing.reason
