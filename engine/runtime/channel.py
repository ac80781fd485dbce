"""Messages between the daemon, the fork server, supervisors and exec helpers.

Every control channel is an AF_UNIX SOCK_SEQPACKET socket: one message is one JSON object,
optionally carrying file descriptors (SCM_RIGHTS). Message boundaries come from the kernel,
so several threads may send on one socket without interleaving.
"""

import array
import json
import os
import socket

MAX_MESSAGE = 256 * 1024
MAX_FDS = 32


class ChannelClosed(EOFError):
    """The peer closed the channel (or died)."""


def pair():
    """(a, b): a connected SEQPACKET socketpair, both ends close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock, obj, fds=()):
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", list(fds)))])
    else:
        sock.send(data)


def recv(sock, with_fds=False):
    """One message -> obj (or (obj, fds) with with_fds). ChannelClosed on EOF."""
    if with_fds:
        fds = array.array("i")
        data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - (len(payload) % fds.itemsize)
                fds.frombytes(payload[:usable])
        got = list(fds)
    else:
        data = sock.recv(MAX_MESSAGE)
        got = []
    if not data:
        for fd in got:
            _close(fd)
        raise ChannelClosed("channel closed")
    obj = json.loads(data.decode("utf-8"))
    return (obj, got) if with_fds else obj


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass
