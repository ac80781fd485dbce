"""A tiny key-value store on TCP: one line per request, `GET k`, `SET k v` or `INCR k`; one line back.
The data lives in /data/kv.json (a named volume), written on every change."""

import json
import os
import signal
import socketserver
import threading

PATH = os.environ.get("KV_FILE", "/data/kv.json")
LOCK = threading.Lock()
DATA = {}
if os.path.exists(PATH):
    with open(PATH) as f:
        DATA = json.load(f)


def save():
    with open(PATH + ".tmp", "w") as f:
        json.dump(DATA, f)
    os.replace(PATH + ".tmp", PATH)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            words = line.decode().split()
            with LOCK:
                if words[:1] == ["GET"] and len(words) == 2:
                    reply = DATA.get(words[1], "")
                elif words[:1] == ["SET"] and len(words) == 3:
                    DATA[words[1]] = words[2]
                    save()
                    reply = "OK"
                elif words[:1] == ["INCR"] and len(words) == 2:
                    DATA[words[1]] = str(int(DATA.get(words[1], "0")) + 1)
                    save()
                    reply = DATA[words[1]]
                else:
                    reply = "ERR"
            self.wfile.write((reply + "\n").encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    print("kv: %d keys from %s" % (len(DATA), PATH), flush=True)
    # PID 1 ignores SIGTERM unless it handles it: exit at once on `stop`, not after the 10 s kill
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Server(("0.0.0.0", 6379), Handler).serve_forever()
