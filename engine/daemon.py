"""dockyard-engine entry point: forks the fork server, then imports and runs the daemon (engine/mainloop.py).

The order is the point. The fork server is forked from an interpreter that has imported only the modules a
container's setup needs (runtime.forkserver: the supervisor, the exec helper and what they use), before
the daemon imports its API, images, build and TLS modules and before it reads its certificates. So the fork
server, and every supervisor and exec helper forked from it, carries none of that: less memory in each of
them, and no server key in any process that enters a container. The daemon has no threads yet, as a fork
needs. Keep the imports at the top of this module to the fork server's own.
"""

import sys

from dockyard.engine.runtime.forkserver import ForkServer


def main(argv=None):
    """Run dockyard-engine with `argv` (sys.argv[1:] when None); returns the process exit code."""
    forkserver = ForkServer()
    forkserver.start()
    try:
        from dockyard.engine.mainloop import run_daemon  # after the fork, on purpose: see the module docstring

        return run_daemon(argv, forkserver)
    finally:
        forkserver.stop()


if __name__ == "__main__":
    sys.exit(main())
