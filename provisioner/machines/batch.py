"""Creating several machines at once: names from `-n`, bounded concurrency, progress lines prefixed with
the machine's name, and a summary in which one failure does not hide the others."""

import contextlib
import threading

from dockyard.provisioner.core.errors import DockyardError, UsageError
from dockyard.provisioner.core.store import validate_name

DEFAULT_CONCURRENCY = 4


def expand_names(names, count=None):
    """create -n 3 worker -> worker-1..worker-3; several names stay as given (each expanded with -n)."""
    names = list(names)
    if count is not None:
        names = [f"{n}-{i}" for n in names for i in range(1, count + 1)]
    seen = set()
    for n in names:
        validate_name(n)
        if n in seen:
            raise UsageError(f'Error: machine name "{n}" given twice')
        seen.add(n)
    return names


def _first_line(e):
    text = str(e).strip()
    if not isinstance(e, DockyardError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text.splitlines()[0] if text else type(e).__name__


class Batch:
    """Runs action(name, log) for every name, at most `limit` at a time. `lead`, a name the others may wait for
    (the manager of a new swarm), runs outside the limit, so that waiting machines can never keep it from a slot."""

    def __init__(self, names, action, echo, limit=DEFAULT_CONCURRENCY, lead=None):
        self.names = list(names)
        self.lead = lead
        self.action = action
        self.echo = echo
        self.limit = max(1, int(limit))
        self.errors = {}
        self._lock = threading.Lock()  # one progress line at a time; errors dict

    def logger(self, name):
        def log(msg):
            with self._lock:
                for line in str(msg).splitlines() or [""]:
                    self.echo(f"({name}) {line}")

        return log

    def _run_one(self, name, sem):
        with contextlib.nullcontext() if name == self.lead else sem:
            log = self.logger(name)
            try:
                self.action(name, log)
            except BaseException as e:  # noqa: BLE001  (a failure is reported, not raised: the others go on)
                msg = "interrupted" if isinstance(e, KeyboardInterrupt) else _first_line(e)
                with self._lock:
                    self.errors[name] = msg
                log(f"Error: {msg}")

    def run(self):
        """Returns {name: error} for the machines that failed."""
        sem = threading.Semaphore(self.limit)
        # Daemon threads: Ctrl-C ends the command; an interrupted create is left in state Error for rm -f.
        threads = [
            threading.Thread(target=self._run_one, args=(n, sem), name=f"create-{n}", daemon=True) for n in self.names
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return dict(self.errors)

    def summary(self):
        ok = [n for n in self.names if n not in self.errors]
        lines = [f"Created {len(ok)} of {len(self.names)} machines" + (f": {', '.join(ok)}" if ok else "")]
        if self.errors:
            lines.append("Failed:")
            lines += [f"  {n}: {self.errors[n]}" for n in self.names if n in self.errors]
        return "\n".join(lines)
