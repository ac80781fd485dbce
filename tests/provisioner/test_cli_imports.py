"""What starting the CLI imports: heavy libraries load only where a command needs them (startup time)."""

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_cli_entry_imports_no_ssh_cloud_or_plugin_machinery():
    loaded = imported_after("import dockyard.provisioner.cli.main")
    assert "click" in loaded and "dockyard.provisioner.cli.create" in loaded
    assert sorted(loaded & {"paramiko", "libcloud", "importlib.metadata", "dockyard.provisioner.core.ssh"}) == []


def test_a_builtin_driver_needs_no_entry_points_and_a_listing_reads_them():
    loaded = imported_after("from dockyard.drivers import registry\nregistry.get('generic')")
    assert "dockyard.drivers.generic" in loaded and "importlib.metadata" not in loaded
    loaded = imported_after("from dockyard.drivers import registry\nassert 'generic' in registry.names()")
    assert "importlib.metadata" in loaded
