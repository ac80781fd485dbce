"""What `pip install .` installs: one top-level package, `dockyard`, with the engine, the templates and the CLI."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_only_the_dockyard_package(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*cache")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("dockyard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"dockyard"}
    for member in (
        "dockyard/__init__.py",
        "dockyard/provisioner/cli/main.py",
        "dockyard/drivers/base.py",
        "dockyard/engine/daemon.py",
        "dockyard/templates/engine.service.j2",
        "dockyard/engine/runtime/seccomp_default.json",
    ):
        assert member in names
    assert "dockyard = dockyard.provisioner.cli.main:main" in entry_points
    assert "dockyard-engine = dockyard.engine.daemon:main" in entry_points
