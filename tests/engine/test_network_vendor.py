"""pyroute2 ships inside the engine bundle and is imported from an extracted, cacheable copy."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

pytest.importorskip("pyroute2")

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[1] + "/_vendor")  # what the bundle's __main__ does
from dockyard.engine.network import vendor
vendor.prepare(sys.argv[2])
import pyroute2
from pyroute2.iproute.linux import IPRoute
from pyroute2.nftables.main import NFTables
print(json.dumps({"file": pyroute2.__file__, "engine": __import__("dockyard.engine").__file__}))
"""


def _probe(pyz, cache):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a host
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(pyz), str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_bundle_carries_pyroute2_and_engine_imports_an_extracted_copy(bundle, tmp_path):
    pyz = bundle[0]
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
    assert "_vendor/pyroute2/__init__.py" in names
    assert "_vendor/pyroute2/nftables/main.py" in names
    assert not any(n.endswith((".so", ".pyc")) for n in names if n.startswith("_vendor/"))

    cache = tmp_path / "network"
    cache.mkdir()
    (cache / "vendor-0000stale0000").mkdir()  # a copy from an older bundle
    first = _probe(pyz, cache)
    assert first["engine"].startswith(str(pyz))  # the engine itself still runs from the zip
    copies = [d for d in os.listdir(cache) if d.startswith("vendor-")]
    assert len(copies) == 1 and copies[0] != "vendor-0000stale0000"
    assert first["file"] == str(cache / copies[0] / "pyroute2" / "__init__.py")
    # bytecode is cached next to the copy, so later engine starts skip compiling
    assert os.listdir(cache / copies[0] / "pyroute2" / "__pycache__")
    second = _probe(pyz, cache)
    assert second["file"] == first["file"]


def test_source_tree_imports_normally(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from dockyard.engine.network import vendor; "
            "vendor.prepare(sys.argv[1]); import pyroute2; print(pyroute2.__file__)",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.returncode == 0, out.stderr
    assert os.listdir(tmp_path) == []
    assert not out.stdout.startswith(str(tmp_path))
