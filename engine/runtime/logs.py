"""The json-file log: one {"log","stream","time"} object per line, as dockerd's json-file driver.

The supervisor writes it (JsonLogWriter); the logs API reads it (read_entries, tail, follow).
"""

import calendar
import json
import os
import time

from dockyard.engine.timefmt import rfc3339nano_ns

MAX_PARTIAL = 16 * 1024  # like dockerd: a line longer than this is logged in pieces


class JsonLogWriter:
    """Splits a stream into lines; each complete line is appended at once (O_APPEND, unbuffered)."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.partial = {"stdout": b"", "stderr": b""}

    def write(self, stream, data):
        buf = self.partial.get(stream, b"") + data
        out = []
        while True:
            idx = buf.find(b"\n")
            if idx < 0:
                break
            out.append(buf[: idx + 1])
            buf = buf[idx + 1 :]
        while len(buf) >= MAX_PARTIAL:
            out.append(buf[:MAX_PARTIAL])
            buf = buf[MAX_PARTIAL:]
        self.partial[stream] = buf
        if out:
            self._emit(stream, out)

    def _emit(self, stream, pieces):
        now = rfc3339nano_ns(time.time_ns())
        lines = []
        for piece in pieces:
            lines.append(
                json.dumps(
                    {"log": piece.decode("utf-8", "replace"), "stream": stream, "time": now}, separators=(",", ":")
                )
            )
        data = ("\n".join(lines) + "\n").encode("utf-8")
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def flush(self):
        for stream, buf in list(self.partial.items()):
            if buf:
                self.partial[stream] = b""
                self._emit(stream, [buf])

    def close(self):
        self.flush()
        try:
            os.close(self.fd)
        except OSError:
            pass


def parse_time(text):
    """RFC 3339 'YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ' -> integer nanoseconds since the epoch."""
    main, _, frac = text.rstrip("Z").partition(".")
    try:
        sec = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0
    digits = (frac + "000000000")[:9] if frac else "0"
    return sec * 1000000000 + int(digits or "0")


def parse_since(value):
    """API since/until: '1700000000.123456789' or '1700000000' -> ns; '' or '0' -> None."""
    if value is None or value == "" or value == "0":
        return None
    sec, _, frac = str(value).partition(".")
    try:
        return int(sec) * 1000000000 + int((frac + "000000000")[:9] or "0")
    except ValueError:
        return None


class Entry:
    __slots__ = ("stream", "data", "time", "ns")

    def __init__(self, stream, data, time_text):
        self.stream = stream
        self.data = data
        self.time = time_text
        self.ns = None

    def nanos(self):
        if self.ns is None:
            self.ns = parse_time(self.time)
        return self.ns


def _parse_line(line):
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return Entry(obj.get("stream", "stdout"), obj.get("log", "").encode("utf-8"), obj.get("time", ""))


def tail_offset(path, n):
    """Byte offset where the last `n` lines of the file start (reading backwards in blocks)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    if n <= 0:
        return size
    with open(path, "rb") as fh:
        pos, count, block = size, 0, 64 * 1024
        # A trailing newline ends the last line; it does not start one.
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            end = len(chunk)
            if pos + step == size and chunk.endswith(b"\n"):
                end -= 1
            idx = chunk.rfind(b"\n", 0, end)
            while idx >= 0:
                count += 1
                if count >= n:
                    return pos + idx + 1
                end = idx
                idx = chunk.rfind(b"\n", 0, end)
        return 0


class LogReader:
    """Reads entries from an offset; `poll()` returns what was appended since the last call."""

    def __init__(self, path, offset=0):
        self.path = path
        self.offset = offset
        self.rest = b""

    def poll(self):
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            if line.strip():
                entry = _parse_line(line)
                if entry is not None:
                    out.append(entry)
        return out
