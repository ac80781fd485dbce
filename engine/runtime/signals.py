"""Signal names and numbers as the Docker API sends them ("TERM", "SIGKILL", "9", "RTMIN+3")."""

import signal


class SignalError(ValueError):
    """An unknown signal name or number."""


def _table():
    out = {}
    for name in dir(signal):
        if name.startswith("SIG") and not name.startswith("SIG_") and name not in ("SIGRTMIN", "SIGRTMAX"):
            value = getattr(signal, name)
            try:
                out[name[3:]] = int(value)
            except (TypeError, ValueError):
                pass
    out.setdefault("IOT", int(signal.SIGABRT))
    out.setdefault("CLD", int(signal.SIGCHLD))
    out.setdefault("POLL", int(getattr(signal, "SIGIO", 29)))
    return out


NAMES = _table()
RTMIN = int(getattr(signal, "SIGRTMIN", 34))
RTMAX = int(getattr(signal, "SIGRTMAX", 64))


def parse_signal(value):
    """'TERM', 'SIGTERM', 'term', '15', 'RTMIN+3' -> int; SignalError otherwise."""
    text = str(value).strip()
    if not text:
        raise SignalError("Invalid signal: %s" % value)
    if text.isdigit():
        num = int(text)
        if num <= 0 or num > RTMAX:
            raise SignalError("Invalid signal: %s" % value)
        return num
    up = text.upper()
    if up.startswith("SIG"):
        up = up[3:]
    if up in NAMES:
        return NAMES[up]
    for base, start in (("RTMIN", RTMIN), ("RTMAX", RTMAX)):
        if up == base:
            return start
        if up.startswith(base + "+") or up.startswith(base + "-"):
            try:
                offset = int(up[len(base) :])
            except ValueError:
                break
            num = start + offset
            if RTMIN <= num <= RTMAX:
                return num
    raise SignalError("Invalid signal: %s" % value)


def signal_name(num):
    for name, value in NAMES.items():
        if value == num:
            return "SIG" + name
    return str(num)
