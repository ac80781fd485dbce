"""The web front: /health, /hit (counts in the kv service, reached by its service name), /get/<key>."""

import http.server
import os
import signal
import socket
import socketserver

KV = (os.environ["KV_HOST"], 6379)
NAME = os.environ.get("APP_NAME", "app")


def kv(*words):
    with socket.create_connection(KV, timeout=5) as s:
        s.sendall((" ".join(words) + "\n").encode())
        return s.makefile().readline().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            kv("GET", "health")  # healthy only when the store answers too
            body = "ok"
        elif self.path == "/hit":
            body = "%s %s %s" % (NAME, socket.gethostname(), kv("INCR", "hits"))
        elif self.path.startswith("/get/"):
            body = kv("GET", self.path[5:])
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print("web %s: %s" % (socket.gethostname(), fmt % args), flush=True)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    port = int(os.environ.get("APP_PORT", "8000"))
    print("web %s listening on %d, kv at %s" % (socket.gethostname(), port, KV[0]), flush=True)
    # PID 1 ignores SIGTERM unless it handles it: exit at once on `stop`, not after the 10 s kill
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Server(("0.0.0.0", port), Handler).serve_forever()
