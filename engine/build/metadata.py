"""Instructions that only change the image config: their argument forms and checks (moby's wording)."""

from __future__ import annotations

import re

from dockyard.engine.build.parser import json_array
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.runtime.signals import SignalError, parse_signal

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.I)
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
MIN_HEALTH_INTERVAL = 10**6  # 1ms, as moby


def go_duration(text: str, what: str) -> int:
    """'1m30s' -> nanoseconds (Go's time.ParseDuration, without signs)."""
    if text == "0":
        return 0
    pos, total = 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _UNITS[m.group(2)])
        pos = m.end()
    if pos != len(text) or not text:
        raise InvalidParameter("invalid duration for --%s: %r" % (what, text))
    return total


def healthcheck(flags: dict[str, list[str]], rest: str, json_args: list[str] | None) -> dict:
    """HEALTHCHECK [options] CMD ... | NONE -> the config's Healthcheck."""
    words = rest.split(None, 1)
    kind = words[0].upper() if words else ""
    if kind == "NONE":
        if flags or len(words) > 1:
            raise InvalidParameter("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise InvalidParameter('Unknown type "%s" in HEALTHCHECK (try CMD)' % kind)
    cmd_text = words[1] if len(words) > 1 else ""
    if not cmd_text.strip():
        raise InvalidParameter("Missing command after HEALTHCHECK CMD")
    from_json = json_array(cmd_text)
    test = ["CMD"] + from_json if from_json is not None else ["CMD-SHELL", cmd_text]
    out: dict = {"Test": test}
    for flag, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ):
        if flag in flags:
            value = go_duration(flags[flag][-1], flag)
            if value and value < MIN_HEALTH_INTERVAL:
                raise InvalidParameter("%s cannot be less than 1ms" % key)
            if value:
                out[key] = value
    if "retries" in flags:
        try:
            retries = int(flags["retries"][-1])
        except ValueError:
            raise InvalidParameter("invalid --retries value %r" % flags["retries"][-1]) from None
        if retries < 0:
            raise InvalidParameter("--retries cannot be negative (%d)" % retries)
        if retries:
            out["Retries"] = retries
    return out


def exposed_ports(words: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for word in words:
        m = _PORT.match(word)
        if not m:
            raise InvalidParameter("Invalid containerPort: %s" % word)
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        proto = (m.group(3) or "tcp").lower()
        if hi < lo or hi > 65535:
            raise InvalidParameter("Invalid port range: %s" % word)
        for port in range(lo, hi + 1):
            out["%d/%s" % (port, proto)] = {}
    return out


def stop_signal(text: str) -> str:
    try:
        parse_signal(text)
    except SignalError as exc:
        raise InvalidParameter(str(exc)) from None
    return text


def stage_name(name: str) -> str:
    if not _STAGE_NAME.match(name):
        raise InvalidParameter(
            "invalid name for build stage: %r, name can't start with a number or contain symbols" % name
        )
    return name


PROXY_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
