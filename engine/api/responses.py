"""What handlers send back: complete responses, chunked streams and hijacked connections."""

import json
import socket
import ssl
import threading

NO_BODY_STATUS = (204, 304)


class Response:
    """A complete (non-streamed) response."""

    def __init__(self, status=200, body=b"", content_type=None, headers=None):
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        self.content_type = content_type
        self.headers = list(headers or [])


def json_bytes(obj):
    # Go's json.Encoder ends each document with a newline; clients don't care, curl users do.
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def json_response(obj, status=200, headers=None):
    return Response(status, json_bytes(obj), "application/json", headers)


def error_response(status, message):
    if status in NO_BODY_STATUS:
        return Response(status)
    # One line, whatever a request put into it (a name ending in a newline is echoed as \n).
    message = str(message).replace("\r", "\\r").replace("\n", "\\n")
    # Exactly application/json, no charset: the CLI only decodes errors with that type.
    return json_response({"message": message}, status)


class ChunkedStream:
    """A streaming response: headers go out at creation, every write is one flushed chunk."""

    def __init__(self, conn, request):
        self._conn = conn
        self._request = request
        self._lock = threading.Lock()
        self.closed = False

    def write(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data:
            return
        if self._request.method == "HEAD":
            return
        with self._lock:
            if self.closed:
                raise ValueError("write to a closed stream")
            self._conn.send_raw(b"%x\r\n" % len(data) + data + b"\r\n")

    def write_json(self, obj):
        self.write(json_bytes(obj))

    def flush(self):
        """Writes are sent immediately; kept for file-like callers."""

    def close(self):
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._request.method != "HEAD":
                self._conn.send_raw(b"0\r\n\r\n")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            # Leave the chunked body unterminated so the client sees a broken stream, not success.
            self._request.must_close = True


class HijackedConnection:
    """The raw duplex socket after '101 UPGRADED'.

    Bytes the client sent right behind the request (stdin can arrive before
    the container starts) are returned first by recv(). With TLS, check
    pending() before select(): decrypted bytes may sit inside the SSL object.
    The server closes the connection when the handler returns unless the
    handler called detach() (it then owns the socket, e.g. in another thread).
    """

    def __init__(self, sock, leftover):
        self.sock = sock
        self._leftover = bytearray(leftover)
        self.detached = False
        self.closed = False

    def recv(self, n=65536):
        if self._leftover:
            data = bytes(self._leftover[:n])
            del self._leftover[:n]
            return data
        return self.sock.recv(n)

    def pending(self):
        extra = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
        return len(self._leftover) + extra

    def sendall(self, data):
        self.sock.sendall(data)

    def fileno(self):
        return self.sock.fileno()

    def settimeout(self, value):
        self.sock.settimeout(value)

    def shutdown_write(self):
        """Half-close our direction on plain sockets (TLS has no portable half-close: no-op)."""
        if not isinstance(self.sock, ssl.SSLSocket):
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def detach(self):
        self.detached = True
        return self

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
