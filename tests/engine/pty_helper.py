"""Run a command on a real pseudo-terminal, type into it, collect what it prints (docker -it tests)."""

import os
import pty
import select
import time


def run_in_pty(argv, inputs, env=None, delay=0.5, timeout=30):
    """-> (exit code, output bytes). Each input is written after `delay` seconds of output."""
    pid, fd = pty.fork()
    if pid == 0:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.execvp(argv[0], argv)
    out = bytearray()

    def pump(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return False
                if not data:
                    return False
                out.extend(data)
        return True

    pump(delay)
    for data in inputs:
        os.write(fd, data)
        pump(delay)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pump(0.2):
        pass
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), bytes(out)
