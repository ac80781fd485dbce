"""dockyard-engine entry point: runs the daemon (engine/mainloop.py) with its fork server.

The fork server (engine/runtime/forkserver.py) is not forked from the daemon: the daemon starts it on demand
as a fresh, minimal interpreter that imports only the runtime modules a container's setup needs, and it exits
by itself when idle. So neither it nor any supervisor or exec helper carries the daemon's API, images, build
or TLS modules, or its server key, and an idle engine is the daemon alone.
"""

import sys

from dockyard.engine.runtime.forkserver import ForkServer


def main(argv=None):
    """Run dockyard-engine with `argv` (sys.argv[1:] when None); returns the process exit code."""
    forkserver = ForkServer()  # started on the first container start (or create), not here
    try:
        from dockyard.engine.mainloop import run_daemon

        return run_daemon(argv, forkserver)
    finally:
        forkserver.stop()


if __name__ == "__main__":
    sys.exit(main())
