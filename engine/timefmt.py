"""Timestamps in the formats the Docker API uses (RFC 3339 with nanoseconds, UTC)."""

import time


def rfc3339nano(ts=None):
    """e.g. '2025-11-28T04:28:00.123456789Z'; Go clients parse it with time.RFC3339Nano."""
    ns = time.time_ns() if ts is None else int(round(ts * 1e9))
    return rfc3339nano_ns(ns)


def rfc3339nano_ns(ns):
    """Same from integer nanoseconds (no float rounding)."""
    sec, frac = divmod(int(ns), 1000000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%09dZ" % frac
