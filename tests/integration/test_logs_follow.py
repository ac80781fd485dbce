"""`dockyard logs --follow` on a real test host: the engine's last lines, then each new one as it is written, until
Ctrl-C (exit 130, as tail -f), and nothing left following the log on the host afterwards."""

import queue
import signal
import threading
import time

import pytest

from dockyard.provisioner.provision.initsys import LOG_PATH
from tests.integration.test_generic import create_generic

pytestmark = pytest.mark.integration


def lines_of(stream):
    """A queue of the stream's lines, read on a thread (so the test can wait with a timeout)."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_line(q, text, timeout=30):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not in the followed log; got {seen}")


def test_logs_follow_streams_the_engine_log_until_ctrl_c(dockyard, make_host):
    host = make_host()
    create_generic(dockyard, host, "v1", "-q")
    follower = dockyard.popen("logs", "--follow", "-n", "3", "v1")
    try:
        out = lines_of(follower.stdout)
        host.exec(f"echo dockyard-follow-marker-1 >> {LOG_PATH}", check=True)
        wait_line(out, "dockyard-follow-marker-1")
        host.exec(f"echo dockyard-follow-marker-2 >> {LOG_PATH}", check=True)
        wait_line(out, "dockyard-follow-marker-2")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=20) == 130
        assert "Traceback" not in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    # The remote tail ends with the connection (no process left following the log on the host).
    def following():  # argv, not a shell: pgrep does not count itself, a shell around it would match
        return host.exec(["pgrep", "-f", f"tail -n 3 -F {LOG_PATH}"]).returncode == 0

    deadline = time.monotonic() + 20
    while following() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not following()

    # Without --follow: the last lines, and the command returns.
    assert "dockyard-follow-marker-2" in dockyard("logs", "-n", "5", "v1").stdout


def test_logs_follow_reads_the_journal_through_sudo_on_a_systemd_host(dockyard, make_host):
    host = make_host(systemd=True)
    create_generic(dockyard, host, "sd1", "-q", user="tester")  # not root: journalctl runs through sudo -n
    follower = dockyard.popen("logs", "-f", "-n", "1", "sd1")
    try:
        out = lines_of(follower.stdout)
        assert out.get(timeout=30)  # the last line so far: journalctl is running (and follows from here)
        host.exec("systemctl restart dockyard-engine.service", check=True)
        wait_line(out, "Started")  # a new line: the restart, logged after the follow began
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=20) == 130
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
