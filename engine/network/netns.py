"""Run code inside another network namespace (a container's) from a short-lived thread."""

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = None


def _setns(fd, nstype):
    if hasattr(os, "setns"):  # python >= 3.12
        os.setns(fd, nstype)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


def netns_path(pid):
    return "/proc/%d/ns/net" % pid


def run_in_netns(path, func, *args):
    """Call func(*args) in a new thread that first joined the network namespace at `path`.

    The network namespace is a per-thread attribute on Linux, so only that thread moves;
    it exits afterwards instead of going back. Sockets it creates stay in that namespace.
    Returns func's result or re-raises its exception here.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    box = {}

    def target():
        try:
            _setns(fd, CLONE_NEWNET)
            box["value"] = func(*args)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    try:
        thread = threading.Thread(target=target, name="netns-worker", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def loopback_up():
    """Bring `lo` up in the calling thread's network namespace (ioctl: no netlink library needed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    finally:
        sock.close()
