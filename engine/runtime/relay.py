"""Engine side of attach and exec streams: copies bytes between a hijacked client connection
(plain or TLS) and the container side, with detach keys, half-close and docker-py's first-write
delay. One thread per stream; the client socket is only touched from that thread (OpenSSL
objects must not be read and written concurrently)."""

import errno
import os
import select
import socket
import struct
import time

DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q


class DetachKeyError(ValueError):
    pass


def parse_detach_keys(text):
    """'ctrl-p,ctrl-q' -> b'\\x10\\x11'; '' -> the default."""
    if not text:
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for part in text.split(","):
        part = part.strip()
        if len(part) == 1:
            out.append(ord(part))
            continue
        low = part.lower()
        if low.startswith("ctrl-") and len(low) == 6:
            ch = low[5]
            if "a" <= ch <= "z":
                out.append(ord(ch) - ord("a") + 1)
                continue
            special = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}
            if ch in special:
                out.append(special[ch])
                continue
        raise DetachKeyError("Invalid detach keys (%s) provided" % text)
    return bytes(out)


class Escape:
    """Watches stdin for the detach sequence; holds back a partial match."""

    def __init__(self, keys):
        self.keys = keys or b""
        self.held = b""

    def feed(self, data):
        """-> (bytes to forward, detached?)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for b in data:
            self.held += bytes([b])
            if self.keys.startswith(self.held):
                if self.held == self.keys:
                    return bytes(out), True
                continue
            out += self.held
            self.held = b""
        return bytes(out), False


def _client_readable(client, timeout):
    if client.pending():
        return True
    r, _, _ = select.select([client.fileno()], [], [], timeout)
    return bool(r)


def drain_client(client):
    """Consume what the client still sent (its TLS close_notify), so closing sends no reset."""
    try:
        client.settimeout(0.0)
        for _ in range(64):
            if not client.recv(65536):
                break
    except (OSError, ValueError):
        pass


def frame(stream, data):
    return struct.pack(">BxxxI", stream, len(data)) + data


def relay_attach(client, peer, stdin=True, detach_keys=DEFAULT_DETACH_KEYS, first_write_at=0.0, prefix=b""):
    """client <-> peer (a stream socket to the supervisor); returns when either side ends."""
    escape = Escape(detach_keys if stdin else b"")
    client_open = True
    peer_fd = peer.fileno()
    sent_prefix = not prefix
    try:
        while True:
            if not sent_prefix:
                sleep_until(first_write_at)
                client.sendall(prefix)
                sent_prefix = True
            rlist = [peer_fd] + ([client.fileno()] if client_open else [])
            if client_open and client.pending():
                ready = [client.fileno()]
            else:
                ready, _, _ = select.select(rlist, [], [])
            if client_open and client.fileno() in ready:
                try:
                    data = client.recv(65536)
                except (OSError, ValueError):
                    data = b""
                if not data:
                    # Half-close (CloseWrite): the client still reads the output.
                    client_open = False
                    _shutdown_write(peer)
                elif stdin:
                    data, detached = escape.feed(data)
                    if data:
                        peer.sendall(data)
                    if detached:
                        return
            if peer_fd in ready:
                data = peer.recv(65536)
                if not data:
                    return
                sleep_until(first_write_at)
                client.sendall(data)
    except OSError:
        return
    finally:
        peer.close()


def _shutdown_write(sock):
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def sleep_until(t):
    """Sleep until time.monotonic() reaches t (no-op when it already has)."""
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def relay_exec(client, proc, detach_keys=DEFAULT_DETACH_KEYS, first_write_at=0.0):
    """client <-> an exec process (ExecProcess: .outputs {fd: stream}, .stdin_fd, .master,
    .tty, .poll_events()). Returns when the process exited and its output drained."""
    escape = Escape(detach_keys if proc.attach_stdin else b"")
    # Read the client even without stdin: its half-close must be consumed, or closing the
    # connection with it unread makes the kernel send a reset instead of a clean end.
    client_open = True
    drain_deadline = None
    try:
        while True:
            if proc.exited and (not proc.outputs or (drain_deadline is not None and time.monotonic() > drain_deadline)):
                return
            if proc.exited and drain_deadline is None:
                drain_deadline = time.monotonic() + 0.5
            rlist = list(proc.outputs) + [proc.ctl.fileno()]
            if client_open:
                rlist.append(client.fileno())
            if client_open and client.pending():
                ready = [client.fileno()]
            else:
                timeout = None if drain_deadline is None else max(0.0, drain_deadline - time.monotonic())
                ready, _, _ = select.select(rlist, [], [], timeout)
            for fd in ready:
                if client_open and fd == client.fileno():
                    try:
                        data = client.recv(65536)
                    except (OSError, ValueError):
                        data = b""
                    if not data:
                        client_open = False
                        proc.close_stdin()
                        continue
                    if not proc.attach_stdin:
                        continue
                    data, detached = escape.feed(data)
                    if data:
                        proc.write_stdin(data)
                    if detached:
                        return
                elif fd == proc.ctl.fileno():
                    proc.poll_events()
                elif fd in proc.outputs:
                    try:
                        data = os.read(fd, 65536)
                    except OSError as exc:
                        if exc.errno not in (errno.EIO,):
                            raise
                        data = b""
                    if not data:
                        proc.close_output(fd)
                        continue
                    sleep_until(first_write_at)
                    stream = proc.outputs.get(fd, 1)
                    client.sendall(data if proc.tty else frame(stream, data))
    except OSError:
        return
