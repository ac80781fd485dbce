"""Relaying a container's stdio inside its supervisor: output (two pipes, or the pty master) goes to
the log and to every attached client (framed as Docker's multiplexed stream unless tty), client input
goes to the container's stdin pipe or pty; a client too slow to take its output stalls the output."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import time

from dockyard.engine.runtime import logs

STDIN, STDOUT, STDERR = 0, 1, 2
MAX_CLIENT_BUFFER = 1 << 20  # above this an attached client stalls the container's output


class Client:
    """An attached stream (engine side holds the other end of `sock`)."""

    def __init__(self, sock, opts, tty):
        self.sock = sock
        self.sock.setblocking(False)
        self.stdin = bool(opts.get("stdin"))
        self.stdout = bool(opts.get("stdout", True))
        self.stderr = bool(opts.get("stderr", True))
        self.tty = tty
        self.out = bytearray()
        self.reading = True
        self.closed = False

    def frame(self, stream, data):
        if self.tty:
            return data
        return struct.pack(">BxxxI", stream, len(data)) + data


class StdioRelay:
    """The container's stdio streams and the attached clients, on the supervisor's selector."""

    def __init__(self, sel: selectors.BaseSelector, tty: bool, stdin_once: bool) -> None:
        self.sel = sel  # the supervisor's: one loop for control, output, clients and port proxies
        self.tty = tty
        self.stdin_once = stdin_once
        self.clients: list[Client] = []
        self.outputs: dict[int, int] = {}  # fd -> stream number
        self.stdin_fd: int | None = None
        self.stdin_buf = bytearray()
        self.stdin_closing = False
        self.master: int | None = None
        self.log: logs.JsonLogWriter | logs.NullLogWriter | None = None  # opened by the supervisor

    def add_client(self, sock: socket.socket, opts: dict) -> Client:
        """An attached stream (`opts`: stdin, stdout, stderr), served from now on."""
        client = Client(sock, opts, self.tty)
        self.clients.append(client)
        self.sel.register(sock, selectors.EVENT_READ, ("client", client))
        return client

    def update_interest(self) -> None:
        """Which fds the selector watches now: output unless a client stalls it, writable ends with data."""
        stalled = any(len(c.out) > MAX_CLIENT_BUFFER for c in self.clients)
        for fd in list(self.outputs):
            want = 0 if stalled else selectors.EVENT_READ
            self.set(fd, want, ("out", fd))
        for client in self.clients:
            want = (selectors.EVENT_READ if client.reading else 0) | (selectors.EVENT_WRITE if client.out else 0)
            self.set(client.sock, want, ("client", client))
        if self.stdin_fd is not None:
            self.set(self.stdin_fd, selectors.EVENT_WRITE if self.stdin_buf else 0, ("stdin", None))

    def set(self, fileobj, events: int, data) -> None:
        """Register, modify or unregister `fileobj` on the selector (events 0: unregister)."""
        try:
            key = self.sel.get_key(fileobj)
        except (KeyError, ValueError):
            key = None
        if key is None:
            if events:
                self.sel.register(fileobj, events, data)
        elif not events:
            self.sel.unregister(fileobj)
        elif key.events != events:
            self.sel.modify(fileobj, events, data)

    def read_output(self, fd: int) -> None:
        """Output is readable on `fd`: to the log and to the clients that want that stream."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the pty's last slave closed
                raise
            data = b""
        if not data:
            self.close_output(fd)
            return
        stream = self.outputs[fd]
        assert self.log is not None  # opened before any output fd is registered
        self.log.write("stdout" if stream == STDOUT else "stderr", data)
        for client in self.clients:
            if (stream == STDOUT and client.stdout) or (stream == STDERR and client.stderr):
                client.out += client.frame(stream, data)
                self.flush_client(client)

    def close_output(self, fd: int) -> None:
        self.outputs.pop(fd, None)
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        if fd != self.master:
            os.close(fd)

    def client_io(self, client: Client, events: int) -> None:
        """A client's socket is ready: flush its output, take its input."""
        if events & selectors.EVENT_WRITE:
            self.flush_client(client)
        if client.closed or not events & selectors.EVENT_READ:
            return
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.close_client(client)
            return
        if not data:
            # Half-close: no more stdin from this client, but it still wants the output.
            client.reading = False
            if client.stdin and self.stdin_once:
                self.stdin_closing = True
                self.write_stdin()
            return
        if client.stdin:
            if self.master is not None:
                self._write_master(data)
            elif self.stdin_fd is not None:
                self.stdin_buf += data
                self.write_stdin()

    def _write_master(self, data):
        view = memoryview(data)
        deadline = time.monotonic() + 1.0
        while view and time.monotonic() < deadline:
            try:
                n = os.write(self.master, view)
                view = view[n:]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                return

    def write_stdin(self) -> None:
        """Write buffered input to the stdin pipe; close it once drained if stdin is closing."""
        if self.stdin_fd is None:
            return
        try:
            while self.stdin_buf:
                n = os.write(self.stdin_fd, self.stdin_buf)
                del self.stdin_buf[:n]
        except BlockingIOError:
            return
        except OSError:
            self.stdin_buf.clear()
        if self.stdin_closing and not self.stdin_buf:
            self.set(self.stdin_fd, 0, None)
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def flush_client(self, client: Client) -> None:
        if client.closed:
            return
        try:
            while client.out:
                n = client.sock.send(client.out)
                del client.out[:n]
        except BlockingIOError:
            return
        except OSError:
            self.close_client(client)

    def close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        if client in self.clients:
            self.clients.remove(client)

    def close_stdin(self) -> None:
        """No more input: close the stdin pipe once the buffered input is written."""
        self.stdin_closing = True
        self.write_stdin()
