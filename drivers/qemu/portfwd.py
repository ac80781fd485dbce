"""Published ports of a qemu machine answer on the laptop's 127.0.0.1: a small process, started and stopped with
the VM by the qemu driver, watches the engine's /events over the machine's mutual-TLS API and, whenever a
container starts or stops, makes QEMU's user-mode host forwards (QMP `hostfwd_add`/`hostfwd_remove` through
`human-monitor-command`) equal to the set of published ports (TCP and UDP, same port number on both sides).

A port another program holds on the laptop cannot be forwarded: that is written to the log and to the state
file (ports.json, shown by `dockyard inspect`), and retried on the next change or every RETRY seconds.
The process exits by itself when QEMU does.

Run as: python3 -m dockyard.drivers.qemu.portfwd --machine-dir DIR --qmp SOCK --engine-port N --qemu-pid PID
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator

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


def rule(proto: str, port: int) -> str:
    return f"{proto}:127.0.0.1:{port}"


class Forwards:
    """QEMU's host forwards for published ports, made equal to the wanted set on each apply()."""

    def __init__(self, qmp_path: str, log: Callable[[str], None], netdev: str = "net0") -> None:
        self.qmp_path, self.log, self.netdev = qmp_path, log, netdev
        self.active: dict[tuple[str, int], str] = {}
        self.conflicts: dict[tuple[str, int], str] = {}

    def _hmp(self, q: QMP, command: str) -> str:
        return str(q.execute("human-monitor-command", **{"command-line": command}) or "").strip()

    def apply(self, want: dict[tuple[str, int], str]) -> None:
        gone = [k for k in self.active if k not in want]
        new = [k for k in want if k not in self.active]
        self.conflicts = {k: v for k, v in self.conflicts.items() if k in want}
        if not gone and not new:
            return
        with QMP(self.qmp_path, timeout=5) as q:
            for proto, port in gone:
                self._hmp(q, f"hostfwd_remove {self.netdev} {rule(proto, port)}")
                self.log(f"removed 127.0.0.1:{port}/{proto} (container {self.active.pop((proto, port))})")
            for proto, port in sorted(new):
                name = want[(proto, port)]
                reply = self._hmp(q, f"hostfwd_add {self.netdev} {rule(proto, port)}-:{port}")
                if reply:  # QEMU answers with text only when the rule could not be set up
                    why = (
                        "ports below 1024 need root on this computer"
                        if port < 1024 and os.geteuid() != 0
                        else "another program on this computer uses it"
                    )
                    if self.conflicts.get((proto, port)) != name:
                        self.log(
                            f"Warning: cannot forward 127.0.0.1:{port}/{proto} to container {name}: {why} "
                            f"(QEMU: {reply.splitlines()[0]}); the port still answers inside the machine"
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

    def __init__(self, port: int, cert_dir: str, timeout: float = RETRY) -> None:
        self.port, self.cert_dir, self.timeout = port, cert_dir, timeout

    def _conn(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=os.path.join(self.cert_dir, "ca.pem"))
        ctx.load_cert_chain(os.path.join(self.cert_dir, "cert.pem"), os.path.join(self.cert_dir, "key.pem"))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=self.timeout)

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


def run(machine_dir: str, qmp_path: str, engine_port: int, qemu_pid: int) -> int:
    def log(msg: str) -> None:
        print(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg, flush=True)

    forwards = Forwards(qmp_path, log)
    engine = Engine(engine_port, machine_dir)
    state_path = os.path.join(machine_dir, STATE_FILE)
    last_error = ""

    def reconcile() -> None:
        forwards.apply(published(engine.containers()))
        write_state(state_path, forwards.state())

    write_state(state_path, forwards.state())
    log(f"watching the engine on 127.0.0.1:{engine_port} for published ports (QEMU pid {qemu_pid})")
    while alive(qemu_pid):
        try:
            reconcile()
            for _ in engine.events():
                reconcile()
            last_error = ""
        except (TimeoutError, socket.timeout):
            continue  # quiet for RETRY seconds: reconcile again (retries conflicts) and check QEMU
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError, QMPError) as e:
            # The engine is not up yet (provisioning) or restarting: try again shortly; say so once.
            if str(e) != last_error:
                log(f"waiting for the engine or QEMU: {e}")
                last_error = str(e)
            time.sleep(2)
    log("QEMU exited; stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dockyard-portfwd", description=__doc__.splitlines()[0])
    ap.add_argument("--machine-dir", required=True)
    ap.add_argument("--qmp", required=True)
    ap.add_argument("--engine-port", type=int, required=True)
    ap.add_argument("--qemu-pid", type=int, required=True)
    a = ap.parse_args(argv)
    try:
        return run(a.machine_dir, a.qmp, a.engine_port, a.qemu_pid)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
