"""The qemu driver against a real QEMU process (a blank disk: firmware only, no guest OS, so it is quick):
daemonizing, pidfile, QMP state, stop falling back to kill, kill, remove, port conflicts, boot-wait errors."""

import os
import shutil
import signal
import socket
import subprocess

import pytest

from dockyard.drivers.base import State
from dockyard.drivers.guestimage import seed
from dockyard.drivers.qemu import boot
from dockyard.drivers.qemu import driver as qdriver
from dockyard.drivers.qemu.qmp import QMP, QMPError
from dockyard.provisioner.core.errors import DriverError

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-system-x86_64") and shutil.which("qemu-img")),
    reason="needs qemu-system-x86 and qemu-utils (.ci/vm-deps.sh)",
)


def make_driver(machine_dir):
    os.makedirs(machine_dir, exist_ok=True)
    d = qdriver.QemuDriver("t1", str(machine_dir))
    d.progress = lambda msg: d.__dict__.setdefault("said", []).append(msg)
    d.config.update(
        Binary=shutil.which("qemu-system-x86_64"),
        AccelUsed="tcg",
        CPUs=1,
        Memory=128,
        SSHPort=qdriver.free_port(),
        EngineHostPort=qdriver.free_port(),
        MAC="52:54:00:12:34:56",
        Restrict=True,
        Network="user",
        BootTimeout=2,
        SSHUser="docker",
    )
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", d.path("disk.qcow2"), "64M"], check=True)
    seed.write_seed(
        d.path("seed.iso"),
        seed.render("t1", "iid-test", "ssh-ed25519 AAAA test", [seed.nic("eth0", "52:54:00:12:34:56")]),
    )
    d.ensure_ssh_key()
    return d


@pytest.fixture
def vm(tmp_path):
    d = make_driver(tmp_path / "m")
    yield d
    d.remove()  # whatever a test left running


def test_launch_state_and_kill(vm):
    assert vm.state() == State.STOPPED
    vm._launch()
    pid = vm._pid()
    assert pid and qdriver.process_alive(pid)
    with open(vm.path("qemu.pid")) as f:
        assert int(f.read()) == pid
    assert vm.state() == State.RUNNING
    with QMP(vm._qmp_path()) as q:
        assert q.execute("query-status")["status"] == "running"
        q.execute("stop")
    assert vm.state() == State.PAUSED
    with QMP(vm._qmp_path()) as q:
        q.execute("cont")
        with pytest.raises(QMPError, match="no-such-command"):
            q.execute("no-such-command")
    assert vm.state() == State.RUNNING
    vm.kill()
    assert vm.state() == State.STOPPED and not qdriver.process_alive(pid)
    vm.kill()  # nothing running: no error


def test_stop_kills_when_guest_ignores_power_button(vm, monkeypatch):
    monkeypatch.setattr(qdriver, "STOP_TIMEOUT", 1.0)
    vm._launch()
    pid = vm._pid()
    vm.stop()  # the firmware alone does not handle ACPI power-down
    assert not qdriver.process_alive(pid) and vm.state() == State.STOPPED
    assert any("did not power off" in m for m in vm.said)
    vm.stop()  # already stopped: no error


def test_remove_running_vm_removes_process_and_files(vm):
    vm._launch()
    pid = vm._pid()
    vm.remove()
    assert not qdriver.process_alive(pid)
    left = set(os.listdir(vm.machine_dir)) & set(qdriver.FILES)
    assert not left
    vm.remove()  # again: still fine


def test_taken_port_is_reported(vm):
    with socket.socket() as s:
        s.bind(("127.0.0.1", vm.config["SSHPort"]))
        s.listen()
        with pytest.raises(qdriver._PortTaken, match="host forwarding rule"):
            vm._launch()
        with pytest.raises(DriverError, match=f"127.0.0.1:{vm.config['SSHPort']}, the machine's SSH port, is in use"):
            vm.start()
    assert vm._pid() is None


def test_boot_timeout_says_how_far_it_got(vm):
    vm._launch()
    with pytest.raises(DriverError) as e:
        vm._wait_booted()
    text = str(e.value)
    assert "timed out after 2s waiting for SSH log-in" in text
    assert f"QEMU process: running (pid {vm._pid()})" in text
    assert "kernel: no output on the serial console yet" in text
    assert f"SSH 127.0.0.1:{vm.config['SSHPort']}: no SSH banner yet" in text
    assert vm.path("serial.log") in text


def test_qemu_dying_during_boot_is_reported(vm):
    vm._launch()
    os.kill(vm._pid(), signal.SIGKILL)
    with pytest.raises(DriverError, match="the QEMU process stopped while the machine was booting"):
        vm._wait_booted()


def test_long_machine_dir_puts_qmp_socket_elsewhere(tmp_path):
    d = make_driver(tmp_path / ("x" * 60) / ("y" * 60))
    try:
        assert not d._qmp_path().startswith(d.machine_dir)
        d._launch()
        assert d.state() == State.RUNNING
    finally:
        d.remove()
    assert not os.path.exists(d._qmp_path())


def test_boot_progress_from_serial_text():
    serial = (
        "[    0.000000] Linux version 6.1.0-56-amd64\nRun /init as init process\nWelcome to Debian!\n"
        "[   27.4] cloud-init[274]: Cloud-init v. 22.4.2 running 'init-local' at Sat. Up 58.71 seconds.\n"
    )
    p = boot.progress(serial)
    assert p["kernel"] and p["systemd"] and p["cloud_init_started"] and not p["cloud_init_done"]
    text = boot.describe("m", 42, serial, "127.0.0.1:2222", True, "authentication failed", "/x/serial.log")
    assert "cloud-init: running, not finished" in text and "sshd answers, but log-in failed" in text
    done = serial + "cloud-init[300]: Cloud-init v. 22.4.2 finished at Sat, 28 Nov. Datasource NoCloud. Up 90 seconds\n"
    assert boot.progress(done)["cloud_init_done"]


def test_read_serial_strips_colours_and_starts_at_offset(tmp_path):
    log = tmp_path / "serial.log"
    log.write_bytes(b"old boot\r\n[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mssh.service\x1b[0m\r\n")
    assert boot.read_serial(str(log)) == "old boot\n[  OK  ] Started ssh.service\n"
    assert boot.read_serial(str(log), offset=len(b"old boot\r\n")) == "[  OK  ] Started ssh.service\n"
    assert boot.read_serial(str(tmp_path / "missing")) == ""
