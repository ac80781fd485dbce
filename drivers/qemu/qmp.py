"""A minimal QMP (QEMU Machine Protocol) client over the VM's unix socket: greeting, capabilities, commands."""

import json
import socket

from dockyard.provisioner.core.errors import DriverError


class QMPError(DriverError):
    """QMP is unreachable, or a command returned an error."""


class QMP:
    """One QMP session. QEMU serves one client at a time on a socket, so keep sessions short."""

    def __init__(self, path, timeout=5.0):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buf = b""
        try:
            self._sock.connect(path)
            greeting = self._read()
            if "QMP" not in greeting:
                raise QMPError(f"{path} is not a QMP socket (greeting {greeting!r})")
            self.version = greeting["QMP"].get("version", {}).get("qemu", {})
            self.execute("qmp_capabilities")
        except OSError as e:
            self.close()
            raise QMPError(f"cannot talk to QEMU's QMP socket {path}: {e.strerror or e}") from None
        except QMPError:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass

    def _read(self):
        """The next message that is not an asynchronous event."""
        while True:
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise QMPError(f"QEMU closed the QMP connection on {self.path}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise QMPError(f"malformed QMP message on {self.path}: {line[:200]!r}") from None
            if "event" not in msg:
                return msg

    def execute(self, command, **arguments):
        """Run a command and return its "return" value."""
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            reply = self._read()
        except OSError as e:
            raise QMPError(f"QMP command {command} failed: {e.strerror or e}") from None
        if "error" in reply:
            err = reply["error"]
            raise QMPError(f"QMP command {command} failed: {err.get('class', '')}: {err.get('desc', err)}")
        return reply.get("return")
