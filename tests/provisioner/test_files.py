"""core.files: atomic replacement with and without fsync, and what a failed write leaves behind."""

import os
import stat

import pytest

from dockyard.provisioner.core import files
from dockyard.provisioner.core.files import atomic_write, atomic_writer


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_mode_and_no_temp_left(tmp_path, durable):
    p = tmp_path / "f.json"
    atomic_write(str(p), "one", 0o644, durable=durable)
    assert p.read_bytes() == b"one" and stat.S_IMODE(p.stat().st_mode) == 0o644
    atomic_write(p, b"two", 0o600, durable=durable)
    assert p.read_bytes() == b"two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_durable_fsyncs_file_and_directory_and_not_durable_does_not(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    atomic_write(tmp_path / "a", b"x", durable=False)
    assert synced == []
    atomic_write(tmp_path / "b", b"x", durable=True)
    assert synced == [False, True]  # the file, then the directory holding the rename


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "keep"
    atomic_write(p, b"old", durable=False)
    with pytest.raises(RuntimeError), atomic_writer(p, 0o600, durable=True) as f:
        f.write(b"half")
        raise RuntimeError("cut")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["keep"]
