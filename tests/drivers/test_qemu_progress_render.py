"""create's progress rendering: on a terminal a download's running progress line is redrawn in place; off a
terminal (pipes, CI) every line is printed plainly, one per step."""

import io

from dockyard.provisioner.cli.progress import Renderer

LINES = [
    "Downloading http://127.0.0.1:1/debian-12-genericcloud-amd64.qcow2 (700.0 MiB)",
    "  10% 70.0 MiB of 700.0 MiB at 35.0 MiB/s",
    "  20% 140.0 MiB of 700.0 MiB at 35.0 MiB/s",
    "  Downloaded 700.0 MiB in 20.0s (35.0 MiB/s); verifying...",
    "  Boot: kernel started (3s)",
]


def test_plain_when_not_a_terminal():
    out = io.StringIO()
    r = Renderer(out, tty=False)
    for line in LINES:
        r(line)
    assert out.getvalue() == "".join(line + "\n" for line in LINES)


def test_download_progress_redrawn_in_place_on_a_terminal():
    out = io.StringIO()
    r = Renderer(out, tty=True)
    for line in LINES:
        r(line)
    text = out.getvalue()
    assert text.count("\n") == 3  # the two progress lines share one screen line, cleared before the next step
    assert "\r\x1b[K  10% 70.0 MiB" in text and "\r\x1b[K  20% 140.0 MiB" in text
    assert text.endswith(
        "\r\x1b[K  Downloaded 700.0 MiB in 20.0s (35.0 MiB/s); verifying...\n  Boot: kernel started (3s)\n"
    )
