"""engine/memory.py on this machine's glibc: arenas capped, free memory handed back to the kernel."""

import subprocess
import sys

# Freed 100 KB blocks between blocks still in use: holes glibc keeps until malloc_trim gives their pages back.
HOLES = """
import sys
from dockyard.engine import memory

def rss_kb():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0])

assert memory.limit_arenas()
blocks = [bytearray(100_000) for _ in range(1000)]
for b in blocks:
    b[::4096] = b"x" * len(b[::4096])  # touch every page
kept = blocks[1::2]
del blocks[:]
before = rss_kb()
released = memory.trim()
print(released, before - rss_kb())
"""


def test_trim_hands_freed_memory_back():
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    released, dropped_kb = out.stdout.split()
    assert released == "True"
    assert int(dropped_kb) > 30_000, out.stdout  # ~50 MB of holes
