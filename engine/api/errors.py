"""API error classes: each maps to one HTTP status and a JSON body {"message": ...}."""


class ApiError(Exception):
    """Base of every error a handler raises to answer the client.

    The server turns it into `status` with body {"message": message} and
    Content-Type exactly application/json (the docker CLI prints raw bodies
    for anything else).
    """

    status = 500

    def __init__(self, message="", status=None):
        super().__init__(message)
        self.message = str(message)
        if status is not None:
            self.status = status


class NotModified(ApiError):
    """304: the container is already started/stopped. Sent without a body."""

    status = 304


class BadRequest(ApiError):
    """400: a bad parameter, malformed JSON, unsupported API version."""

    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    """404: no such container/image/...; also unknown routes ("page not found")."""

    status = 404


class Conflict(ApiError):
    """409: name in use, container running, ..."""

    status = 409


class ServerError(ApiError):
    """500: the engine failed doing something that should have worked."""

    status = 500


class NotImplementedApi(ApiError):
    """501: a known request the engine does not support (yet)."""

    status = 501


class Unavailable(ApiError):
    status = 503
