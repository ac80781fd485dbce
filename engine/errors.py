"""The errors the engine's parts raise, by kind; only the API layer turns a kind into an HTTP status.

The message is what the client shows (the docker CLI prints it as is), so it is kept verbatim.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine's parts raise on purpose; an unknown kind means the engine failed."""

    def __init__(self, message: object = "") -> None:
        super().__init__(message)
        self.message = str(message)


class NotModified(EngineError):
    """Nothing to do: the container is already started or stopped."""


class InvalidParameter(EngineError):
    """A bad parameter, malformed JSON or an unsupported option in the request."""


class Forbidden(EngineError):
    """Allowed in general, refused for this object (a pre-defined network, a read-only rootfs)."""


class NotFound(EngineError):
    """No such container, image, volume, network, exec, path..."""


class Conflict(EngineError):
    """The object's state forbids it: name in use, container running, image in use..."""


class Unsupported(EngineError):
    """A known request the engine does not support (yet)."""


class Unavailable(EngineError):
    """A part the request needs cannot serve it right now."""


class SystemFailure(EngineError):
    """The engine failed doing something that should have worked."""
