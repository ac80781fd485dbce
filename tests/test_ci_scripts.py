"""The .ci deps scripts run as CI runs them: each finishes with exit 0 (they reuse the cached images here).

CI calls these scripts before the tests, so a broken one fails CI before any test can report it; running
them here too means a change to what they call (e.g. a builder's signature) fails a test on a developer's
machine first.
"""

import glob
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, ".ci", "*-deps.sh")))


@pytest.mark.skipif(os.geteuid() != 0, reason="the deps scripts install Debian packages (root)")
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_deps_script_builds(script):
    result = subprocess.run(["bash", script, "--build"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_there_are_deps_scripts():
    assert {os.path.basename(s) for s in SCRIPTS} >= {"hosts-deps.sh", "vm-deps.sh", "cloud-deps.sh"}
