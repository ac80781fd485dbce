"""The fork server is a fresh interpreter that imports only the runtime's modules: it (and every supervisor and
exec helper forked from it) carries no TLS library and no server key, and the daemon starts it on demand."""

import email.utils
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from dockyard.engine.api.http import http_date
from dockyard.engine.api.routes import LAZY_RESOURCES, LazyResource
from dockyard.engine.errors import SystemFailure
from tests.engine.engine_helper import REPO, http_get
from tests.engine.runtime_helper import child_pids

# Nothing a container's setup needs; each of these was in the fork server before it was forked first.
HEAVY = (
    "ssl",
    "_ssl",
    "_hashlib",
    "logging",
    "argparse",
    "http.client",
    "ctypes.util",
    "subprocess",
    "calendar",
    "pkgutil",
    "platform",
    "uuid",
    "typing",
    "traceback",
    "dockyard.engine.mainloop",
    "dockyard.engine.services",
    "dockyard.engine.config",
    "dockyard.engine.api",
    "dockyard.engine.images",
    "dockyard.engine.build",
)


def imported_after(statement: str, *flags: str) -> set[str]:
    """sys.modules of a fresh interpreter after `statement` (printed before anything else is imported)."""
    code = f"import sys\nsys.path[:0] = {[str(REPO)]!r}\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_the_entry_module_imports_only_the_fork_servers_modules():
    # -S -I: nothing of site's (which loads typing in some installs) beside what the entry module imports
    loaded = imported_after("import dockyard.engine.daemon", "-S")
    assert "dockyard.engine.runtime.supervisor" in loaded and "dockyard.engine.runtime.execproc" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_the_fork_servers_interpreter_imports_only_the_runtimes_modules():
    # what the fork server's `python3 -S -I -c` entry imports (runtime/forkserver.py _ENTRY)
    loaded = imported_after("import dockyard.engine.runtime.forkserver", "-S", "-I")
    assert "dockyard.engine.runtime.supervisor" in loaded and "dockyard.engine.runtime.execproc" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_the_daemons_modules_are_heavy():
    # The check above can fail: the daemon proper loads what the fork server must not.
    loaded = imported_after("import dockyard.engine.mainloop")
    assert {"ssl", "logging", "dockyard.engine.api", "dockyard.engine.services"} <= loaded


def _mapped_files(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in lines if len(line.split()) >= 6}


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_running_fork_server_has_no_tls_library(start_engine, pki):
    certs = pki.server
    proc = start_engine(
        "-H",
        "unix://" + start_engine.socket,
        "-H",
        "tcp://127.0.0.1:0",
        "--tlsverify",
        "--tlscacert",
        certs.ca,
        "--tlscert",
        certs.cert,
        "--tlskey",
        certs.key,
    )
    assert http_get("/_ping", unix=start_engine.socket)[0] == 200
    daemon = proc.proc.pid
    assert [p for p in child_pids(daemon) if _comm(p) == "dockyard-fork"] == [], "started before any request"
    # A create starts it (a start is likely to follow), even one for an image that is not there.
    create = http_get("/containers/create", unix=start_engine.socket, method="POST", body=b'{"Image": "nope"}')
    assert create[0] == 404, create
    deadline = time.monotonic() + 10
    forks = []
    while not forks and time.monotonic() < deadline:
        forks = [p for p in child_pids(daemon) if _comm(p) == "dockyard-fork"]
        time.sleep(0.05)
    assert len(forks) == 1, [(p, _comm(p)) for p in child_pids(daemon)]

    def tls_libraries(pid):
        return sorted(f for f in _mapped_files(pid) if "libssl" in Path(f).name or Path(f).name.startswith("_ssl"))

    assert tls_libraries(daemon), "the daemon serves TLS: its maps must show the TLS library"
    assert tls_libraries(forks[0]) == []
    # a fresh interpreter, not a fork of the daemon: no page of the daemon's heap, and from the bundle it runs
    assert Path(f"/proc/{forks[0]}/exe").resolve() == Path(f"/proc/{daemon}/exe").resolve()
    cmdline = Path(f"/proc/{forks[0]}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"-S", b"-I"] and str(start_engine.pyz).encode() in cmdline[4], cmdline


def test_idle_router_leaves_the_builder_and_the_registry_client_unloaded():
    loaded = imported_after("from dockyard.engine.api.routes import build_router\nbuild_router(None)")
    lazy = {"dockyard.engine.api.build", "dockyard.engine.build.builder", "dockyard.engine.images.registry"}
    lazy |= {"dockyard.engine.images.push", "dockyard.engine.api.auth", "dockyard.engine.api.distribution"}
    assert "dockyard.engine.api.containers" in loaded
    assert sorted(loaded & lazy) == []


def test_lazy_resources_declare_exactly_the_routes_their_modules_register():
    for resource in LAZY_RESOURCES:
        assert set(resource.handlers(None)) == set(resource.routes)


def test_a_lazy_resource_whose_module_registers_other_routes_is_refused():
    module = types.ModuleType("fake_resource")
    module.register = lambda router, engine: router.add("GET", "/other", lambda req: None)
    resource = LazyResource(lambda: module, (("GET", "/declared"),))
    with pytest.raises(SystemFailure, match="/declared.*/other|/other.*/declared"):
        resource.handlers(None)


def test_a_lazy_route_loads_its_module_on_the_first_request(start_engine):
    start_engine()
    status, _, body = http_get("/session", unix=start_engine.socket, method="POST")
    assert status == 501 and b"BuildKit is not supported" in body, (status, body)
    status, _, body = http_get("/v1.41/build?dockerfile=nope", unix=start_engine.socket, method="POST", body=b"")
    assert status >= 400 and b"page not found" not in body, (status, body)


def test_http_date_is_what_email_utils_writes():
    for when in (0, 784111777, 951782400, 1700000000.75, time.time()):
        assert http_date(when) == email.utils.formatdate(when, usegmt=True)
