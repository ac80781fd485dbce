"""Containers resource: create, list, inspect, start/stop/kill/restart/pause, wait, rm, rename,
resize, attach, logs, top, stats, update, prune (req.engine.containers does the work)."""

from __future__ import annotations

import datetime
import os
import re
import select
import ssl
import time

from dockyard.engine.api import bodies
from dockyard.engine.api.responses import Response, json_bytes
from dockyard.engine.errors import Conflict, InvalidParameter, NotFound, NotModified, SystemFailure, Unsupported
from dockyard.engine.runtime import links as linkmod
from dockyard.engine.runtime import logs as logmod
from dockyard.engine.runtime import relay, views
from dockyard.engine.runtime import stats as statsmod
from dockyard.engine.runtime.cgroups import Cgroup
from dockyard.engine.runtime.create import RESTART_POLICIES, validate_name
from dockyard.engine.runtime.logs import parse_since
from dockyard.engine.runtime.spec import RESOURCE_KEYS

MUX = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
DOCKER_PY_DELAY = 0.05  # docker-py loses stream bytes glued to the 101 response (§0.8)
FOLLOW_POLL = 0.05
LOG_WRITE_BATCH = 64 * 1024  # log payloads go out in chunks of about this size, not one per line
MAX_TERMINAL_SIDE = 65535  # TIOCSWINSZ takes unsigned shorts


def register(router, engine):
    router.add("POST", "/containers/create", create)
    router.add("GET", "/containers/json", list_containers)
    router.add("POST", "/containers/prune", prune)
    router.add("GET", "/containers/{id}/json", inspect)
    router.add("POST", "/containers/{id}/start", start)
    router.add("POST", "/containers/{id}/stop", stop)
    router.add("POST", "/containers/{id}/restart", restart)
    router.add("POST", "/containers/{id}/kill", kill)
    router.add("POST", "/containers/{id}/pause", pause)
    router.add("POST", "/containers/{id}/unpause", unpause)
    router.add("POST", "/containers/{id}/wait", wait)
    router.add("DELETE", "/containers/{id}", remove)
    router.add("DELETE", "/containers/{id}/{alias}", remove_link)  # docker rm --link /web/alias
    router.add("POST", "/containers/{id}/rename", rename)
    router.add("POST", "/containers/{id}/resize", resize)
    router.add("POST", "/containers/{id}/attach", attach)
    router.add("GET", "/containers/{id}/logs", logs)
    router.add("GET", "/containers/{id}/top", top)
    router.add("GET", "/containers/{id}/stats", stats)
    router.add("POST", "/containers/{id}/update", update)


def container_of(req):
    return req.engine.containers.get(req.params["id"])


def client_gone(req):
    """True once the client closed (or sent anything more) while we block: nobody to answer."""
    sock = req.conn.sock
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        r, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(r)


def first_write_at(req):
    agent = req.headers.get("User-Agent") or ""
    return time.monotonic() + (DOCKER_PY_DELAY if agent.startswith("docker-sdk-python") else 0.0)


# -- create / list / inspect ----------------------------------------------------------------
def create(req):
    mgr = req.engine.containers
    body = req.json(default=None, schema=bodies.CONTAINER_CREATE)
    if body is None:
        raise InvalidParameter("config cannot be empty in order to create a container")
    name = req.query_value("name") or None
    if name is not None:
        validate_name(name)  # before the image lookup: a 404 there would make the CLI pull
    check_host_config(body.get("HostConfig") or {})
    c, warnings = mgr.create(body, name)
    return Response(201, json_bytes({"Id": c.id, "Warnings": warnings}), "application/json")


def check_host_config(hc):
    """The value checks of a create's HostConfig that the schema's types do not cover."""
    bodies.check_resources(hc, os.cpu_count() or 1)
    log_config = hc.get("LogConfig") or {}
    if log_config.get("Type"):  # "" is the engine's default driver: the runtime checks it at create
        logmod.parse_driver_opts(logmod.check_log_driver(log_config["Type"]), log_config.get("Config"))


def list_containers(req):
    mgr = req.engine.containers
    all_ = req.query_bool("all")
    size = req.query_bool("size")
    limit = req.query_int("limit", -1)
    if req.query_bool("latest"):
        limit = 1
    items = views.filter_containers(mgr.list(), req.filters(), mgr, all_ or (limit is not None and limit > 0))
    if limit is not None and limit > 0:
        items = items[:limit]
    now = time.time()
    return [views.summary(c, mgr, size, now) for c in items]


def inspect(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    return views.inspect(c, mgr, req.query_bool("size"))


# -- lifecycle ------------------------------------------------------------------------------
def start(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    if req.query_value("checkpoint"):
        raise InvalidParameter("checkpoints are not supported")
    mgr.start(c)
    return Response(204)


def _timeout(req):
    value = req.query_value("t")
    if value in (None, ""):
        value = req.query_value("timeout")
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter('invalid value for t: "%s"' % value) from None


def stop(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    if not mgr.stop(c, _timeout(req), req.query_value("signal")):
        raise NotModified("container already stopped")
    return Response(204)


def restart(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    mgr.restart(c, _timeout(req), req.query_value("signal"))
    return Response(204)


def kill(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    mgr.kill(c, req.query_value("signal"))
    return Response(204)


def pause(req):
    mgr = req.engine.containers
    mgr.pause(mgr.get(req.params["id"]))
    return Response(204)


def unpause(req):
    mgr = req.engine.containers
    mgr.unpause(mgr.get(req.params["id"]))
    return Response(204)


def wait(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    condition = req.query_value("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise InvalidParameter("invalid condition: %s" % condition)
    # Headers now: `docker run` sends /start only once they arrived (§0.3).
    stream = req.stream(200, "application/json")
    code = mgr.wait(c, condition, gone=lambda: client_gone(req))
    if code is None:
        req.must_close = True
        return None
    body = {"Error": None, "StatusCode": code}
    err = c.state.get("Error")
    if err:
        body["Error"] = {"Message": err}
    try:
        stream.write_json(body)
    except OSError:
        req.must_close = True
    return None


def remove(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    if req.query_bool("link"):
        raise InvalidParameter("dockyard does not support links")
    mgr.remove(c, force=req.query_bool("force"), volumes=req.query_bool("v"))
    return Response(204)


def rename(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    mgr.rename(c, req.query_value("name") or "")
    return Response(204)


def resize(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    h, w = req.query_uint("h", MAX_TERMINAL_SIDE), req.query_uint("w", MAX_TERMINAL_SIDE)
    mgr.resize(c, h, w)
    return Response(200, b"", "text/plain; charset=utf-8")


def prune(req):
    mgr = req.engine.containers
    filters = req.filters()
    filters.validate(("until", "label", "label!"))
    until = [parse_until(value) for value in filters.get("until")]
    deleted = mgr.prune(until_ns=min(until) if until else None, labels=filters.label_matcher("label", "label!"))
    return {"ContainersDeleted": deleted or None, "SpaceReclaimed": 0}


_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
_GO_UNITS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def parse_until(value: str, now_ns: int | None = None) -> int:
    """A prune `until` filter as moby reads it (timetypes.GetTimestamp): a Go duration before now
    ("24h", "1h30m"), an RFC 3339 time or date, or Unix seconds -> ns; InvalidParameter otherwise."""
    text = str(value).strip()
    now_ns = time.time_ns() if now_ns is None else now_ns
    if _GO_DURATION.match(text):
        total = sum(
            float(num) * _GO_UNITS[unit] for num, _, unit in re.findall(r"([0-9]+(\.[0-9]*)?)(ns|us|µs|ms|s|m|h)", text)
        )
        return now_ns - int(total)
    since = parse_since(text)
    if since is not None and re.match(r"^[0-9]+(\.[0-9]+)?$", text):
        return since
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            parsed = datetime.datetime.strptime(re.sub(r"\.[0-9]+", "", text).replace("Z", "+00:00"), fmt)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return int(parsed.timestamp()) * 1000000000
    raise InvalidParameter("failed to parse value %s, expected a duration, a timestamp or a date" % text)


def update(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    body = req.json(default={}, schema=bodies.CONTAINER_UPDATE) or {}
    warnings = []
    with c.lock:
        merged = dict(c.host_config)
        merged.update({k: v for k, v in body.items() if k in bodies.RESOURCES and v})
        bodies.check_resources(merged, os.cpu_count() or 1)
        hc = c.host_config
        if "RestartPolicy" in body and body["RestartPolicy"]:
            rp = body["RestartPolicy"]
            if hc.get("AutoRemove") and (rp.get("Name") or "no") != "no":
                raise InvalidParameter(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container"
                )
            name, count = rp.get("Name") or "no", rp.get("MaximumRetryCount") or 0
            if name not in RESTART_POLICIES:
                raise InvalidParameter("invalid restart policy: unknown policy '%s'" % name)
            if count < 0:
                raise InvalidParameter("invalid restart policy: maximum retry count can't be negative")
            if count and name != "on-failure":
                raise InvalidParameter("invalid restart policy: maximum retry count can only be used with 'on-failure'")
            hc["RestartPolicy"] = {"Name": name, "MaximumRetryCount": count}
        res = {}
        for key in RESOURCE_KEYS:
            if body.get(key):
                hc[key] = body[key]
                res[key] = body[key]
        if res and c.running:
            cg = Cgroup.from_dict(c.state.get("Cgroup"))
            try:
                cg.set_resources(res)
            except OSError as exc:
                raise SystemFailure("cannot update container resources: %s" % exc) from None
        c.save_config()
    mgr.emit(c, "update")
    return {"Warnings": warnings}


# -- attach ---------------------------------------------------------------------------------
def attach(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    try:
        keys = relay.parse_detach_keys(req.query_value("detachKeys") or "")
    except relay.DetachKeyError as exc:
        raise InvalidParameter(str(exc)) from None
    want = {"stdin": req.query_bool("stdin"), "stdout": req.query_bool("stdout"), "stderr": req.query_bool("stderr")}
    stream_it, with_logs = req.query_bool("stream"), req.query_bool("logs")
    if not (stream_it or with_logs):
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    reader = None
    if with_logs and _log_driver(c) != logmod.NONE:  # none: no past output, as dockerd
        reader = logmod.LogReader(c.log_path)
        reader.stop_here()  # the log up to now; what comes after arrives through the attach socket
    peer = mgr.attach_socket(c, want) if stream_it else None
    hijacked = req.hijack(RAW if c.tty else MUX)
    start_at = first_write_at(req)
    if reader is not None:
        try:
            for chunk in _batched(_log_payloads(c, reader.entries(), want["stdout"], want["stderr"], False)):
                relay.sleep_until(start_at)
                hijacked.sendall(chunk)
        finally:
            reader.close()
    if peer is None:
        return None
    relay.relay_attach(hijacked, peer, stdin=want["stdin"], detach_keys=keys, first_write_at=start_at)
    hijacked.shutdown_write()
    relay.drain_client(hijacked)
    return None


# -- logs -----------------------------------------------------------------------------------
def _log_payloads(c, entries, stdout, stderr, timestamps, since=None, until=None):
    for entry in entries:
        if entry.stream == "stdout" and not stdout:
            continue
        if entry.stream == "stderr" and not stderr:
            continue
        if since is not None and entry.nanos() <= since:
            continue
        if until is not None and entry.nanos() > until:
            continue
        data = entry.data
        if timestamps:
            data = entry.time.encode() + b" " + data
        yield data if c.tty else relay.frame(2 if entry.stream == "stderr" else 1, data)


def _batched(payloads):
    """Join small payloads into writes of about LOG_WRITE_BATCH bytes (one chunk per line is slow)."""
    batch, size = [], 0
    for data in payloads:
        batch.append(data)
        size += len(data)
        if size >= LOG_WRITE_BATCH:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def remove_link(req):
    """DELETE /containers/{id}/{alias}?link=1: the legacy link goes from the container's HostConfig
    (in effect at its next start)."""
    ref, alias = req.params["id"], req.params["alias"]
    if not req.query_bool("link"):
        raise NotFound("No such container: %s/%s" % (ref, alias))
    c = req.engine.containers.get(ref)
    with c.lock:
        entries = list(c.host_config.get("Links") or [])
        kept = [e for e in entries if linkmod.parse_link(e).alias != alias]
        if len(kept) == len(entries):
            raise NotFound("No such link: /%s/%s" % (c.name, alias))
        c.host_config["Links"] = kept or None
        c.save_config()
    return None


def _log_driver(c):
    return (c.host_config.get("LogConfig") or {}).get("Type") or logmod.JSON_FILE


def logs(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    stdout, stderr = req.query_bool("stdout"), req.query_bool("stderr")
    if not (stdout or stderr):
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    if _log_driver(c) == logmod.NONE:
        raise Unsupported(logmod.READ_NOT_SUPPORTED)
    follow, timestamps = req.query_bool("follow"), req.query_bool("timestamps")
    since, until = parse_since(req.query_value("since")), parse_since(req.query_value("until"))
    tail = (req.query_value("tail") or "all").strip()
    lines = None
    if tail not in ("all", ""):
        try:
            lines = int(tail)
        except ValueError:
            lines = None
        if lines is not None and lines < 0:
            lines = None
    reader = logmod.LogReader(c.log_path, tail=lines)
    try:
        return _stream_logs(req, c, reader, stdout, stderr, timestamps, since, until, follow)
    finally:
        reader.close()


def _stream_logs(req, c, reader, stdout, stderr, timestamps, since, until, follow):
    stream = req.stream(200, RAW if c.tty else MUX)
    try:
        for chunk in _batched(_log_payloads(c, reader.entries(), stdout, stderr, timestamps, since, until)):
            stream.write(chunk)
        if not follow:
            return None
        while True:
            with c.lock:
                running = c.running or c.status == "restarting"
                if running:
                    c.cond.wait(FOLLOW_POLL)
            sent = 0
            for chunk in _batched(_log_payloads(c, reader.entries(), stdout, stderr, timestamps, since, until)):
                stream.write(chunk)
                sent += 1
            if until is not None and time.time_ns() > until:
                return None
            if not running and not sent:
                return None
            if c.removed:
                return None
            if client_gone(req):
                req.must_close = True
                return None
    except OSError:
        req.must_close = True
        return None


# -- top / stats ----------------------------------------------------------------------------
def top(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    if not c.running:
        raise Conflict("Container %s is not running" % c.id)
    try:
        return statsmod.top(c, req.query_value("ps_args"))
    except ValueError as exc:
        raise SystemFailure(str(exc)) from None


def stats(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    stream_it = req.query_bool("stream", True)
    one_shot = req.query_bool("one-shot")
    if not stream_it:
        raw, ts = statsmod.sample(c)
        if one_shot or not c.running:
            return statsmod.build(c, raw, ts)
        prev = statsmod.build(c, raw, ts)["cpu_stats"]
        time.sleep(0.5)
        raw2, ts2 = statsmod.sample(c)
        return statsmod.build(c, raw2, ts2, prev, ts)
    stream = req.stream(200, "application/json")
    prev, prev_ts = None, None
    try:
        while True:
            raw, ts = statsmod.sample(c)
            doc = statsmod.build(c, raw, ts, prev, prev_ts)
            stream.write_json(doc)
            prev, prev_ts = doc.get("cpu_stats"), ts
            if not c.running:
                return None
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if client_gone(req):
                    req.must_close = True
                    return None
                time.sleep(0.1)
    except OSError:
        req.must_close = True
        return None
