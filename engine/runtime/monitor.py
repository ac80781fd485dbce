"""Engine side of the supervisors' control channels: one thread watches them all and hands
each container's exit (or its supervisor's disappearance) to the manager."""

import logging
import os
import selectors
import threading

from dockyard.engine.runtime import channel

log = logging.getLogger("dockyard.engine")


class Monitor:
    def __init__(self, on_exit):
        self.on_exit = on_exit  # on_exit(container, record or None)
        self.sel = selectors.DefaultSelector()
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.sel.register(self._r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending = []
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="supervisor-monitor", daemon=True)
        self._thread.start()

    def add(self, container, sock):
        with self._lock:
            self._pending.append((container, sock))
        try:
            os.write(self._w, b"x")
        except OSError:
            pass

    def _loop(self):
        while True:
            try:
                events = self.sel.select()
            except OSError:
                continue
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._r, 4096)
                    except OSError:
                        pass
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for container, sock in pending:
                        try:
                            self.sel.register(sock, selectors.EVENT_READ, container)
                        except (ValueError, KeyError, OSError):
                            pass
                    continue
                container, sock = key.data, key.fileobj
                record, closed = None, False
                try:
                    msg = channel.recv(sock)
                    if msg.get("event") == "exited":
                        record = msg
                        closed = True
                    else:
                        continue
                except (channel.ChannelClosed, OSError, ValueError):
                    closed = True
                if closed:
                    try:
                        self.sel.unregister(sock)
                    except (KeyError, ValueError):
                        pass
                    if container.control is sock:
                        try:
                            self.on_exit(container, record, sock)
                        except Exception:
                            log.exception("handling the exit of %s failed", container.id[:12])
                    else:
                        sock.close()
