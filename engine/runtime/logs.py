"""The json-file log: one {"log","stream","time"} object per line, as dockerd's json-file driver.

The supervisor writes it (JsonLogWriter, rotating at --log-opt max-size/max-file as Docker does); the
logs API streams it (LogReader: rotated files first, in blocks, --tail from the end, follow across rotations).
"""

from __future__ import annotations

import json
import os
import time

from dockyard.engine.errors import InvalidParameter
from dockyard.engine.timefmt import rfc3339nano_ns

TYPE_CHECKING = False  # typing's flag without importing typing: the fork server imports this module
if TYPE_CHECKING:
    from typing import Any, Iterator, List

MAX_PARTIAL = 16 * 1024  # like dockerd: a line longer than this is logged in pieces


class LogLimits:
    """--log-opt max-size / max-file of the json-file driver (Docker's defaults: no size limit, 1 file)."""

    def __init__(self, max_size: int | None = None, max_files: int = 1) -> None:
        self.max_size = max_size
        self.max_files = max_files

    def to_dict(self) -> dict:
        return {"max_size": self.max_size, "max_files": self.max_files}

    @classmethod
    def from_dict(cls, data: dict | None) -> LogLimits:
        data = data or {}
        return cls(data.get("max_size"), int(data.get("max_files") or 1))


# The json-file driver's options (moby daemon/logger/jsonfilelog); only the rotation ones change anything here.
LOG_OPTS = ("max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag")
MAX_FILES_LIMIT = 100  # Docker has none; `docker logs` opens every file at once, so bound them
_DECIMAL_UNITS = {"k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}


def from_human_size(text: str) -> int:
    """go-units FromHumanSize, as dockerd parses max-size: "10m" = 10,000,000; suffix b, k, m, g (kb, kib ...)."""
    sep = max(text.rfind(ch) for ch in "0123456789. ")
    if sep < 0:
        raise InvalidParameter("invalid size: '%s'" % text)
    if text[sep] == " ":
        number, suffix = text[:sep], text[sep + 1 :]
    else:
        number, suffix = text[: sep + 1], text[sep + 1 :]
    try:
        size = float(number)
    except ValueError:
        raise InvalidParameter('strconv.ParseFloat: parsing "%s": invalid syntax' % number) from None
    if size < 0 or size != size or size == float("inf"):
        raise InvalidParameter("invalid size: '%s'" % text)
    if suffix:
        lower = suffix.lower()
        ok = len(lower) <= 3 and (
            lower == "b"
            or (
                lower[0] in _DECIMAL_UNITS
                and (len(lower) == 1 or (len(lower) == 2 and lower[1] == "b") or lower[1:] == "ib")
            )
        )
        if not ok:
            raise InvalidParameter("invalid suffix: '%s'" % lower)
        if lower != "b":
            size *= _DECIMAL_UNITS[lower[0]]
    if size >= 1 << 63:
        raise InvalidParameter("invalid size: '%s'" % text)
    return int(size)


# Logging drivers: json-file (Docker's default), local (the same file here, with local's rotation
# defaults: dockerd's local driver keeps a private format nothing but `docker logs` reads) and none.
JSON_FILE, LOCAL, NONE = "json-file", "local", "none"
LOG_DRIVERS = (JSON_FILE, LOCAL, NONE)
LOCAL_OPTS = ("max-size", "max-file", "compress")
LOCAL_DEFAULT_MAX_SIZE, LOCAL_DEFAULT_MAX_FILES = 20 * 1024 * 1024, 5  # dockerd's local driver: 20 MiB x 5
# Docker's other drivers, which ship logs somewhere else: named in the refusal.
OTHER_DOCKER_DRIVERS = (
    "syslog",
    "journald",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "etwlogs",
    "gcplogs",
    "logentries",
)
READ_NOT_SUPPORTED = "configured logging driver does not support reading"


def check_log_driver(name: str) -> str:
    """The driver of a LogConfig.Type ("" is the caller's default); InvalidParameter with dockerd's words."""
    if name in LOG_DRIVERS:
        return name
    if name in OTHER_DOCKER_DRIVERS:
        raise InvalidParameter(
            'logging driver "%s" is not supported by dockyard (json-file, local and none are)' % name
        )
    raise InvalidParameter("logger: no log driver named '%s' is registered" % name)


def parse_driver_opts(driver: str, opts: dict | None) -> LogLimits | None:
    """LogConfig.Config checked for `driver` -> the rotation limits (None for the none driver)."""
    if driver == NONE:
        return None
    if driver == LOCAL:
        opts = dict(opts or {})
        for key in opts:
            if key not in LOCAL_OPTS:
                raise InvalidParameter("unknown log opt '%s' for local log driver" % key)
        limits = parse_log_opts(opts, driver=LOCAL)
        if "max-size" not in opts:
            limits.max_size = LOCAL_DEFAULT_MAX_SIZE
        if "max-file" not in opts:
            limits.max_files = LOCAL_DEFAULT_MAX_FILES
        return limits
    return parse_log_opts(opts)


class NullLogWriter:
    """The none driver: output reaches attached clients only."""

    def write(self, stream, data):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def open_log_writer(path: str, driver: str | None, opts: dict | None) -> JsonLogWriter | NullLogWriter:
    """The supervisor's log for the container's driver; options an older engine let through fall
    back to the driver's defaults."""
    driver = driver or JSON_FILE
    if driver == NONE:
        return NullLogWriter()
    try:
        limits = parse_driver_opts(driver, opts)
    except InvalidParameter:
        limits = parse_driver_opts(driver, {})
    return JsonLogWriter(path, limits)


def parse_log_opts(opts: dict | None, driver: str = JSON_FILE) -> LogLimits:
    """Validate a json-file LogConfig.Config as dockerd does; InvalidParameter (400) with its messages."""
    opts = opts or {}
    for key, value in opts.items():
        if key not in LOG_OPTS:
            raise InvalidParameter("unknown log opt '%s' for %s log driver" % (key, driver))
        if not isinstance(value, str):
            raise InvalidParameter("invalid log opt '%s': the value must be a string" % key)
    max_size = None
    if "max-size" in opts:
        max_size = from_human_size(opts["max-size"])
        if max_size <= 0:
            raise InvalidParameter("max-size must be a positive number")
    max_files = 1
    if "max-file" in opts:
        text = opts["max-file"]
        try:
            max_files = int(text.strip() if text.strip() == text else "x", 10)
        except ValueError:
            raise InvalidParameter('strconv.Atoi: parsing "%s": invalid syntax' % text) from None
        if max_files < 1:
            raise InvalidParameter("max-file cannot be less than 1")
        if max_files > MAX_FILES_LIMIT:
            raise InvalidParameter("max-file cannot be more than %d" % MAX_FILES_LIMIT)
    if opts.get("compress", "false").lower() not in ("", "0", "f", "false"):
        raise InvalidParameter("compress is not supported by dockyard's %s logs: rotated files stay plain" % driver)
    return LogLimits(max_size, max_files)


def rotated_name(path: str, index: int) -> str:
    """<id>-json.log.1 is the newest rotated file, .2 older, ... as Docker names them."""
    return "%s.%d" % (path, index)


def log_files(path: str) -> List[str]:
    """The log's files, oldest first: the rotated ones (.N ... .1) that exist, then the current one."""
    count = 0
    while os.path.exists(rotated_name(path, count + 1)) and count < MAX_FILES_LIMIT:
        count += 1
    return [rotated_name(path, i) for i in range(count, 0, -1)] + [path]


class JsonLogWriter:
    """Splits a stream into lines; each complete line is appended at once (O_APPEND, unbuffered).

    With a max size the file is rotated as Docker's json-file driver does: before a line is written to a
    file that has reached the size, <log> becomes <log>.1 (.1 -> .2 ...; the oldest beyond max-file
    goes), and a new <log> is started. With max-file 1 the file is started afresh.
    """

    def __init__(self, path: str, limits: LogLimits | None = None) -> None:
        self.path = path
        self.limits = limits or LogLimits()
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.partial = {"stdout": b"", "stderr": b""}

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

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
        batch: List[bytes] = []
        batch_size = 0
        max_size = self.limits.max_size
        for piece in pieces:
            line = (
                json.dumps(
                    {"log": piece.decode("utf-8", "replace"), "stream": stream, "time": now}, separators=(",", ":")
                )
                + "\n"
            ).encode("utf-8")
            if max_size is not None and self.size + batch_size >= max_size:
                self._write_all(b"".join(batch))
                batch, batch_size = [], 0
                self._rotate()
            batch.append(line)
            batch_size += len(line)
        self._write_all(b"".join(batch))

    def _write_all(self, data):
        self.size += len(data)
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def _rotate(self):
        os.close(self.fd)
        max_files = self.limits.max_files
        if max_files >= 2:
            last = 1  # the highest rotated index to shift; existing files are .1 .. .(last-1)
            while last < max_files - 1 and os.path.exists(rotated_name(self.path, last)):
                last += 1
            for index in range(last, 1, -1):  # .(i-1) -> .i; the replace drops the oldest
                try:
                    os.replace(rotated_name(self.path, index - 1), rotated_name(self.path, index))
                except FileNotFoundError:
                    pass
            os.replace(self.path, rotated_name(self.path, 1))
        else:
            # A new file, not a truncated one: a reader following the old inode sees it was replaced.
            os.unlink(self.path)
        self.fd = self._open()
        self.size = 0

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
    import calendar  # here: the fork server imports this module (for the supervisor's log writer) and needs none

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


READ_BLOCK = 64 * 1024


def _tail_start(fh, need: int) -> tuple[int | None, int]:
    """Scan an open log file backwards in blocks for the start of its last `need` lines.

    Returns (offset, 0) when the file holds them, else (None, lines the file holds).
    """
    size = os.fstat(fh.fileno()).st_size
    pos, count = size, 0
    while pos > 0:
        step = min(READ_BLOCK, pos)
        pos -= step
        fh.seek(pos)
        chunk = fh.read(step)
        end = len(chunk)
        if pos + step == size and chunk.endswith(b"\n"):
            end -= 1  # a trailing newline ends the last line; it does not start one
        idx = chunk.rfind(b"\n", 0, end)
        while idx >= 0:
            count += 1
            if count >= need:
                return pos + idx + 1, 0
            end = idx
            idx = chunk.rfind(b"\n", 0, end)
    if size:
        count += 1  # the first line of the file has no newline before it
    if count >= need:
        return 0, 0
    return None, count


def tail_offset(path, n):
    """Byte offset where the last `n` lines of one file start (reading backwards in blocks)."""
    try:
        with open(path, "rb") as fh:
            if n <= 0:
                return os.fstat(fh.fileno()).st_size
            offset, _ = _tail_start(fh, n)
            return 0 if offset is None else offset
    except OSError:
        return 0


class LogReader:
    """Streams a container's log, rotated files first, in blocks (never a whole file in memory).

    `entries()` yields what is there now and what was appended since the last call; a follower calls it
    again. `tail` (n >= 0) starts at the last n lines across the files; `offset` starts the current
    file at a byte offset (without rotated files). Files are opened at once: a rotation while we read
    renames them under us and we keep reading what we opened, then follow the chain to the new file.
    """

    def __init__(self, path: str, offset: int = 0, tail: int | None = None) -> None:
        self.path = path
        self.rest = b""
        self.end: int | None = None  # stop_here(): where the current file's reading ends
        self.files: List[Any] = []  # open files still to read, oldest first; the last one is followed
        names = [path] if offset else log_files(path)
        for name in names:
            try:
                self.files.append(open(name, "rb"))
            except OSError:
                continue
        if offset and self.files:
            self.files[-1].seek(offset)
        if tail is not None:
            self._seek_tail(tail)

    def _seek_tail(self, n: int) -> None:
        if n <= 0:
            for fh in self.files[:-1]:
                fh.close()
            self.files = self.files[-1:]
            if self.files:
                self.files[0].seek(0, os.SEEK_END)
            return
        need = n
        for index in range(len(self.files) - 1, -1, -1):
            offset, held = _tail_start(self.files[index], need)
            if offset is not None:
                for fh in self.files[:index]:
                    fh.close()
                self.files = self.files[index:]
                self.files[0].seek(offset)
                for fh in self.files[1:]:
                    fh.seek(0)
                return
            need -= held
        for fh in self.files:
            fh.seek(0)

    def close(self) -> None:
        for fh in self.files:
            fh.close()
        self.files = []

    def __del__(self):
        self.close()

    def _lines(self, data: bytes) -> Iterator[Entry]:
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            if line.strip():
                entry = _parse_line(line)
                if entry is not None:
                    yield entry

    def _end_of_file(self) -> Iterator[Entry]:
        """A finished (rotated) file's last line has no successor to end it."""
        rest, self.rest = self.rest, b""
        if rest.strip():
            entry = _parse_line(rest)
            if entry is not None:
                yield entry

    def _newer_files(self, current) -> List[Any]:
        """After the followed file was rotated away: the files written since, oldest first."""
        ino = os.fstat(current.fileno()).st_ino
        names = log_files(self.path)
        inodes: List[int | None] = []
        for name in names:
            try:
                inodes.append(os.stat(name).st_ino)
            except OSError:
                inodes.append(None)
        start = inodes.index(ino) + 1 if ino in inodes else 0
        out = []
        for name in names[start:]:
            try:
                out.append(open(name, "rb"))
            except OSError:
                continue
        return out

    def _rotated(self, fh) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(fh.fileno()).st_ino
        except OSError:
            return False  # between the rename and the new file: look again next time

    def stop_here(self) -> None:
        """Read only what the files hold now: nothing appended later, no rotation followed."""
        self.end = os.fstat(self.files[-1].fileno()).st_size if self.files else 0

    def entries(self) -> Iterator[Entry]:
        while self.files:
            fh = self.files[0]
            size = READ_BLOCK
            if self.end is not None and len(self.files) == 1:
                size = min(READ_BLOCK, self.end - fh.tell())
                if size <= 0:
                    return
            data = fh.read(size)
            if data:
                yield from self._lines(data)
                continue
            if self.end is not None and len(self.files) == 1:
                return
            if len(self.files) > 1:
                yield from self._end_of_file()
                fh.close()
                self.files.pop(0)
                continue
            if not self._rotated(fh):
                return
            # Rotated: what was appended before the rename is final now; read it, then the newer files.
            data = fh.read(READ_BLOCK)
            while data:
                yield from self._lines(data)
                data = fh.read(READ_BLOCK)
            yield from self._end_of_file()
            newer = self._newer_files(fh)
            fh.close()
            self.files = newer
            if not newer:
                return

    def poll(self) -> List[Entry]:
        """Everything appended since the last call, as a list (small logs and tests)."""
        return list(self.entries())
