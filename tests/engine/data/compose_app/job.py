"""The one-shot job: records a run in the store through the web service, prints what it saw, exits."""

import os
import socket
import sys
import urllib.request

web = os.environ["WEB_URL"]
with socket.create_connection((os.environ["KV_HOST"], 6379), timeout=5) as s:
    s.sendall(b"INCR jobs\n")
    runs = s.makefile().readline().strip()
hits = urllib.request.urlopen(web + "/hit", timeout=5).read().decode()
print("job run %s: %s %s" % (runs, os.environ.get("JOB_TAG", "?"), hits), flush=True)
sys.exit(0)
