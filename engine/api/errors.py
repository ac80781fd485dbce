"""The one place where the engine's errors become HTTP statuses (body {"message": ...})."""

from __future__ import annotations

from dockyard.engine import errors


class ApiError(errors.EngineError):
    """An error only HTTP has a word for (413 body too large): the status is given explicitly."""

    def __init__(self, message: object = "", status: int = 500) -> None:
        super().__init__(message)
        self.status = status


# Checked in order: the first kind an error is an instance of decides its status.
STATUS_OF_KIND: tuple[tuple[type[errors.EngineError], int], ...] = (
    (errors.NotModified, 304),  # sent without a body
    (errors.InvalidParameter, 400),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),  # also unknown routes ("page not found")
    (errors.Conflict, 409),
    (errors.Unsupported, 501),
    (errors.Unavailable, 503),
    (errors.SystemFailure, 500),
)


def http_status(exc: errors.EngineError) -> int:
    """The status the client gets for `exc`; an error of no known kind is the engine's failure (500)."""
    if isinstance(exc, ApiError):
        return exc.status
    for kind, status in STATUS_OF_KIND:
        if isinstance(exc, kind):
            return status
    return 500
