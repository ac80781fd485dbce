"""Published ports of a local machine answer on the laptop's 127.0.0.1: a small process, started and stopped with
the VM by its driver, watches the engine's /events over the machine's mutual-TLS API and, whenever a container
starts or stops, makes the hypervisor's port forwards equal to the set of published ports (TCP and UDP, same port
number on both sides). What is hypervisor-specific is one small role object, a `PortMapper` (add, remove, is the
VM running); here QEMU's (QMP `hostfwd_add`/`hostfwd_remove` through `human-monitor-command`), VirtualBox's in
drivers/virtualbox/portfwd.py (NAT rules).

A port another program holds on the laptop cannot be forwarded: that is written to the log and to the state
file (ports.json, shown by `dockyard inspect`), and retried on the next change or every RETRY seconds.
The process exits by itself when the VM stops.

Run as: python3 -m dockyard.drivers.qemu.portfwd --machine-dir DIR --qmp SOCK --engine-port N --qemu-pid PID
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from dockyard.drivers.qemu.qmp import QMP, QMPError

STATE_FILE = "ports.json"
RETRY = 15.0  # seconds between reconciliations when no event comes (retries conflicts, notices a dead QEMU)
EVENTS = ("start", "die", "stop", "kill", "destroy", "pause", "unpause", "restart")
LOCAL_IPS = ("", "0.0.0.0", "::", "127.0.0.1", "::1")


def published(containers: Iterable[dict]) -> dict[tuple[str, int], str]:
    """{(proto, host port): container name} for every port a running container publishes on all addresses
    or on loopback (those are the ones a user expects on the laptop's 127.0.0.1)."""
    want: dict[tuple[str, int], str] = {}
    for c in containers:
        name = ((c.get("Names") or ["?"])[0] or "?").lstrip("/")
        for p in c.get("Ports") or []:
            public, proto = p.get("PublicPort"), (p.get("Type") or "tcp").lower()
            if public and proto in ("tcp", "udp") and p.get("IP", "") in LOCAL_IPS:
                want.setdefault((proto, int(public)), name)
    return want


class PortMapper(Protocol):
    """One hypervisor's port forwards from the laptop's 127.0.0.1:PORT to the same port of the VM."""

    hypervisor: str  # named in warnings: "QEMU", "VirtualBox"
    persistent: bool  # the hypervisor keeps the forwards after the forwarder exits (they are taken back then)

    def running(self) -> bool:
        """Is the VM still there to forward to? (False ends the forwarder.)"""

    def add(self, proto: str, port: int) -> str:
        """Forward 127.0.0.1:port/proto; "" when done, else why not (in the hypervisor's words)."""

    def remove(self, proto: str, port: int) -> None: ...

    def reset(self) -> None:
        """Take back forwards an earlier forwarder of this VM left behind."""


def rule(proto: str, port: int) -> str:
    return f"{proto}:127.0.0.1:{port}"


class QemuPorts:
    """QEMU's user-mode host forwards, set through QMP; they go away with QEMU."""

    hypervisor = "QEMU"
    persistent = False

    def __init__(self, qmp_path: str, qemu_pid: int, netdev: str = "net0") -> None:
        self.qmp_path, self.qemu_pid, self.netdev = qmp_path, qemu_pid, netdev

    def _hmp(self, command: str) -> str:
        with QMP(self.qmp_path, timeout=5) as q:
            return str(q.execute("human-monitor-command", **{"command-line": command}) or "").strip()

    def running(self) -> bool:
        return alive(self.qemu_pid)

    def add(self, proto: str, port: int) -> str:
        # QEMU answers with text only when the rule could not be set up.
        return self._hmp(f"hostfwd_add {self.netdev} {rule(proto, port)}-:{port}")

    def remove(self, proto: str, port: int) -> None:
        self._hmp(f"hostfwd_remove {self.netdev} {rule(proto, port)}")

    def reset(self) -> None:
        """A new QEMU starts without forwards."""


class Forwards:
    """A mapper's forwards for published ports, made equal to the wanted set on each apply()."""

    def __init__(self, mapper: PortMapper, log: Callable[[str], None]) -> None:
        self.mapper, self.log = mapper, log
        self.active: dict[tuple[str, int], str] = {}
        self.conflicts: dict[tuple[str, int], str] = {}

    def apply(self, want: dict[tuple[str, int], str]) -> None:
        gone = [k for k in self.active if k not in want]
        new = [k for k in want if k not in self.active]
        self.conflicts = {k: v for k, v in self.conflicts.items() if k in want}
        for proto, port in gone:
            self.mapper.remove(proto, port)
            self.log(f"removed 127.0.0.1:{port}/{proto} (container {self.active.pop((proto, port))})")
        for proto, port in sorted(new):
            name = want[(proto, port)]
            reply = self.mapper.add(proto, port)
            if reply:
                why = (
                    "ports below 1024 need root on this computer"
                    if port < 1024 and os.geteuid() != 0
                    else "another program on this computer uses it"
                )
                if self.conflicts.get((proto, port)) != name:
                    self.log(
                        f"Warning: cannot forward 127.0.0.1:{port}/{proto} to container {name}: {why} "
                        f"({self.mapper.hypervisor}: {reply.splitlines()[0]}); the port still answers inside the "
                        "machine"
                    )
                self.conflicts[(proto, port)] = name
                continue
            self.conflicts.pop((proto, port), None)
            self.active[(proto, port)] = name
            self.log(f"forwarding 127.0.0.1:{port}/{proto} to container {name}")

    def state(self) -> dict:
        def key(k):
            return f"{k[1]}/{k[0]}"

        return {
            "Forwarded": {key(k): v for k, v in sorted(self.active.items())},
            "Conflicts": {key(k): v for k, v in sorted(self.conflicts.items())},
        }


class Engine:
    """The machine's engine API over mutual TLS, as `dockyard env` hands it to the docker CLI."""

    def __init__(self, port: int, cert_dir: str, timeout: float = RETRY, host: str = "127.0.0.1") -> None:
        self.port, self.cert_dir, self.timeout, self.host = port, cert_dir, timeout, host

    def _conn(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=os.path.join(self.cert_dir, "ca.pem"))
        ctx.load_cert_chain(os.path.join(self.cert_dir, "cert.pem"), os.path.join(self.cert_dir, "key.pem"))
        return http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=self.timeout)

    def containers(self) -> list[dict]:
        conn = self._conn()
        try:
            conn.request("GET", "/containers/json")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"GET /containers/json: HTTP {resp.status}")
            return json.loads(body)
        finally:
            conn.close()

    def events(self) -> Iterator[dict]:
        """Container events until the stream ends or is silent for `timeout` seconds (socket.timeout)."""
        filters = json.dumps({"type": ["container"], "event": list(EVENTS)})
        conn = self._conn()
        try:
            conn.request("GET", "/events?filters=" + urllib.parse.quote(filters))
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"GET /events: HTTP {resp.status}")
            buf, dec = "", json.JSONDecoder()
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    return
                buf += chunk.decode(errors="replace")
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        ev, end = dec.raw_decode(buf)
                    except ValueError:
                        break  # an object split across chunks: wait for the rest
                    buf = buf[end:]
                    yield ev
        finally:
            conn.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def write_state(path: str, state: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


def log_line(msg: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg, flush=True)


def run(machine_dir: str, mapper: PortMapper, engine: Engine, log: Callable[[str], None] = log_line) -> int:
    """Follow the engine until the VM stops (or SIGTERM), keeping the mapper's forwards equal to the published
    ports; forwards the hypervisor would keep are taken back on the way out."""
    forwards = Forwards(mapper, log)
    state_path = os.path.join(machine_dir, STATE_FILE)
    last_error = ""

    def reconcile() -> None:
        forwards.apply(published(engine.containers()))
        write_state(state_path, forwards.state())

    def stop(_signum, _frame):
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    write_state(state_path, forwards.state())
    log(f"watching the engine on {engine.host}:{engine.port} for published ports ({mapper.hypervisor})")
    try:
        mapper.reset()
        while mapper.running():
            try:
                reconcile()
                for _ in engine.events():
                    reconcile()
                last_error = ""
            except (TimeoutError, socket.timeout):
                continue  # quiet for RETRY seconds: reconcile again (retries conflicts) and check the VM
            except (OSError, ssl.SSLError, http.client.HTTPException, ValueError, QMPError) as e:
                # The engine is not up yet (provisioning) or restarting: try again shortly; say so once.
                if str(e) != last_error:
                    log(f"waiting for the engine or {mapper.hypervisor}: {e}")
                    last_error = str(e)
                time.sleep(2)
        log(f"the VM stopped ({mapper.hypervisor}); stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if mapper.persistent and forwards.active:
            with contextlib.suppress(Exception):  # best effort: the next start clears leftovers too
                if mapper.running():
                    forwards.apply({})
                    write_state(state_path, forwards.state())
    return 0


class ForwarderProcess:
    """A machine's forwarder as its driver runs it: a detached `python -m MODULE --machine-dir DIR ...` beside the
    VM, its pid in portfwd.pid, its output in portfwd.log, what it did in ports.json."""

    FILES = ("portfwd.pid", "portfwd.log", STATE_FILE)
    KILL_WAIT = 10.0

    def __init__(self, machine_dir: str, module: str) -> None:
        self.machine_dir, self.module = os.path.abspath(machine_dir), module
        self.pid_path = os.path.join(self.machine_dir, "portfwd.pid")
        self.log_path = os.path.join(self.machine_dir, "portfwd.log")

    def pid(self) -> int | None:
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip() or 0)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = self.module.encode() in f.read()  # guards against a reused pid
        except (OSError, ValueError):
            return None
        return pid if pid and ours and alive(pid) else None

    def start(self, args: Sequence[str]) -> None:
        """(Re)start the forwarder with its own arguments after --machine-dir."""
        self.stop()
        import dockyard  # the forwarder runs from the same package as its driver, installed or not

        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dockyard.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
        argv = [sys.executable, "-m", self.module, "--machine-dir", self.machine_dir, *args]
        with open(self.log_path, "a") as log:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True, cwd="/"
            )
        with open(self.pid_path, "w") as f:
            f.write(f"{p.pid}\n")
        deadline = time.monotonic() + 5
        while self.pid() is None and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until its command line is readable (the exec may still be under way)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.KILL_WAIT
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_path)

    def state(self) -> dict:
        """What the forwarder last did: {"Forwarded": {"8080/tcp": container}, "Conflicts": {...}}."""
        try:
            with open(os.path.join(self.machine_dir, STATE_FILE)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dockyard-portfwd", description=__doc__.splitlines()[0])
    ap.add_argument("--machine-dir", required=True)
    ap.add_argument("--qmp", required=True)
    ap.add_argument("--engine-port", type=int, required=True)
    ap.add_argument("--qemu-pid", type=int, required=True)
    a = ap.parse_args(argv)
    try:
        return run(a.machine_dir, QemuPorts(a.qmp, a.qemu_pid), Engine(a.engine_port, a.machine_dir))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
