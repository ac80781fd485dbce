"""Exec resource: create an exec instance, start it (hijacked stream or detached), resize, inspect."""

from dockyard.engine.api import bodies
from dockyard.engine.api.containers import MAX_TERMINAL_SIDE, MUX, RAW, first_write_at
from dockyard.engine.api.responses import Response, json_bytes
from dockyard.engine.errors import Conflict, EngineError, InvalidParameter, SystemFailure
from dockyard.engine.runtime import relay


def register(router, engine):
    router.add("POST", "/containers/{id}/exec", create)
    router.add("POST", "/exec/{id}/start", start)
    router.add("POST", "/exec/{id}/resize", resize)
    router.add("GET", "/exec/{id}/json", inspect)


def create(req):
    mgr = req.engine.containers
    c = mgr.get(req.params["id"])
    body = req.json(default=None, schema=bodies.EXEC_CREATE)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid exec config")
    if body.get("DetachKeys"):
        try:
            relay.parse_detach_keys(body["DetachKeys"])
        except relay.DetachKeyError as exc:
            raise InvalidParameter(str(exc)) from None
    inst = req.engine.execs.create(c, body)
    return Response(201, json_bytes({"Id": inst.id}), "application/json")


def start(req):
    execs = req.engine.execs
    inst = execs.get(req.params["id"])
    body = req.json(default={}, schema=bodies.EXEC_START) or {}
    detach = bool(body.get("Detach"))
    tty = body.get("Tty")
    if tty is None:
        tty = bool(inst.body.get("Tty"))
    console = body.get("ConsoleSize") or inst.body.get("ConsoleSize")
    c = inst.container
    if inst.started:
        raise Conflict("Error: Exec command %s is already running" % inst.id)
    if not c.running:
        raise Conflict("container %s is not running" % c.id)
    if detach:
        proc = execs.spawn(inst, tty=tty, console_size=console, detach=True)
        execs.run_detached(inst, proc)
        return Response(200, b"", None)
    hijacked = req.hijack(RAW if tty else MUX)
    start_at = first_write_at(req)
    try:
        proc = execs.spawn(inst, tty=tty, console_size=console)
    except EngineError as exc:
        inst.exit_code, inst.running = 126, False
        _write_error(hijacked, exc.message, tty, start_at)
        relay.drain_client(hijacked)
        return None
    try:
        if proc.failure:
            execs.finish(inst, proc)
            _write_error(
                hijacked,
                "OCI runtime exec failed: exec failed: unable to start container "
                "process: %s: unknown" % proc.failure.get("error", ""),
                tty,
                start_at,
            )
            relay.drain_client(hijacked)
            return None
        relay.relay_exec(hijacked, proc, detach_keys=_keys(inst), first_write_at=start_at)
        execs.finish(inst, proc)  # the exit code is recorded before the stream closes
    finally:
        proc.close()
    hijacked.shutdown_write()
    relay.drain_client(hijacked)
    return None


def _keys(inst):
    try:
        return relay.parse_detach_keys(inst.body.get("DetachKeys") or "")
    except relay.DetachKeyError:
        return relay.DEFAULT_DETACH_KEYS


def _write_error(hijacked, text, tty, start_at):
    data = (text + "\r\n").encode("utf-8", "replace")
    relay.sleep_until(start_at)
    try:
        hijacked.sendall(data if tty else relay.frame(1, data))
    except OSError:
        pass


def resize(req):
    inst = req.engine.execs.get(req.params["id"])
    h, w = req.query_uint("h", MAX_TERMINAL_SIDE), req.query_uint("w", MAX_TERMINAL_SIDE)
    proc = inst.proc
    if proc is None or not inst.running:
        raise Conflict("exec %s is not running" % inst.id)
    try:
        proc.resize(h, w)
    except OSError as exc:
        raise SystemFailure("resize failed: %s" % exc) from None
    return Response(200, b"", "text/plain; charset=utf-8")


def inspect(req):
    return req.engine.execs.get(req.params["id"]).to_api()
