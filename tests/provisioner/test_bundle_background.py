"""The bundle built on a background thread while create does other things; build_bundle() waits for it."""

import os

from dockyard.provisioner.provision.bundle import BUNDLE_NAME, build_bundle, build_bundle_in_background


def test_build_bundle_waits_for_the_background_build_and_reuses_its_file(tmp_path):
    thread = build_bundle_in_background(tmp_path)
    path, digest = build_bundle(tmp_path)  # started while the thread builds: waits for it, builds nothing
    assert not thread.is_alive()  # it returned after the background build, not beside it
    written = os.stat(path).st_ino
    assert path == tmp_path / BUNDLE_NAME and len(digest) == 64
    assert build_bundle(tmp_path) == (path, digest)
    assert os.stat(path).st_ino == written  # reused, not written again (an atomic write is a new inode)


def test_a_failing_background_build_is_reported_by_the_next_build(tmp_path):
    target = tmp_path / "not-a-dir"
    target.write_text("a file where the cache directory should be")
    thread = build_bundle_in_background(target)
    thread.join(timeout=120)
    assert not thread.is_alive()
    try:
        build_bundle(target)
    except OSError as e:
        assert "not-a-dir" in str(e)
    else:
        raise AssertionError("build_bundle into a file succeeded")
