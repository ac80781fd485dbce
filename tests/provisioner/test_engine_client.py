"""engine_client.wait_ready polls a starting engine often, so `create` notices it as soon as it answers."""

import socket

import pytest

from dockyard.provisioner.core import engine_client, pki
from dockyard.provisioner.core.errors import EngineUnreachable


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the with ends: connections are refused


def test_wait_ready_polls_every_fast_poll_delay_at_first(tmp_path):
    tries = []
    paths = pki.CertPaths(str(tmp_path / "certs"))
    pki.ensure_ca(paths, log=lambda m: None)
    pki.ensure_client(paths, log=lambda m: None)
    files = engine_client.TLSFiles(paths.ca, paths.cert, paths.key)
    with pytest.raises(EngineUnreachable, match="did not answer /_ping"):
        engine_client.wait_ready(f"tcp://127.0.0.1:{closed_port()}", files, timeout=1.0, on_retry=tries.append)
    # doubling from 0.1 s (the old schedule) tried 4 times in a second; every 0.05 s tries about 20 times
    assert len(tries) >= 8, tries
    assert all(isinstance(e, EngineUnreachable) for e in tries)
