"""The engine's event bus: what /events streams (container lifecycle, and whatever other parts emit).

The container manager owns it (req.engine.events); parts publish with emit(type, action, actor_id, attributes).
"""

import collections
import threading
import time

HISTORY = 1024


class Event:
    __slots__ = ("type", "action", "actor", "attributes", "ns", "scope")

    def __init__(self, type_, action, actor, attributes, ns, scope="local"):
        self.type = type_
        self.action = action
        self.actor = actor
        self.attributes = attributes
        self.ns = ns
        self.scope = scope

    def to_api(self):
        out = {}
        if self.type == "container":
            # The deprecated top-level fields the docker CLI still reads for containers.
            out["status"] = self.action
            out["id"] = self.actor
            if "image" in self.attributes:
                out["from"] = self.attributes["image"]
        out.update(
            {
                "Type": self.type,
                "Action": self.action,
                "Actor": {"ID": self.actor, "Attributes": dict(self.attributes)},
                "scope": self.scope,
                "time": self.ns // 1000000000,
                "timeNano": self.ns,
            }
        )
        return out


class EventBus:
    def __init__(self, history=HISTORY):
        self._events = collections.deque(maxlen=history)
        self._cond = threading.Condition()
        self._seq = 0
        self.listeners = 0

    def emit(self, type_, action, actor, attributes=None):
        ev = Event(type_, action, actor, dict(attributes or {}), time.time_ns())
        with self._cond:
            self._seq += 1
            self._events.append((self._seq, ev))
            self._cond.notify_all()
        return ev

    def since(self, since_ns=None, until_ns=None):
        """Past events in [since, until] and the sequence number to continue from."""
        with self._cond:
            items = list(self._events)
            seq = self._seq
        out = [
            ev for _, ev in items if (since_ns is None or ev.ns >= since_ns) and (until_ns is None or ev.ns <= until_ns)
        ]
        return out, seq

    def wait(self, after_seq, timeout):
        """Events newer than after_seq (blocking up to timeout) and the new sequence number."""
        with self._cond:
            if self._seq <= after_seq:
                self._cond.wait(timeout)
            items = [(s, ev) for s, ev in self._events if s > after_seq]
            return [ev for _, ev in items], self._seq
