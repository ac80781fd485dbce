"""Maps (method, path) to handlers; every route answers with and without a /vX.YY prefix."""

import re

from dockyard.engine import API_VERSION, MIN_API_VERSION
from dockyard.engine.errors import InvalidParameter, NotFound

_VERSION_PREFIX = re.compile(r"^/v([0-9.]+)(/.*)$")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]+))?\}")


def version_tuple(text):
    """ "1.50" -> (1, 50). Like moby, a non-numeric part counts as 0."""
    parts = []
    for piece in text.split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


def version_less(a, b):
    """True when API version `a` is lower than `b` (padded compare, so 1.5 < 1.50)."""
    ta, tb = version_tuple(a), version_tuple(b)
    width = max(len(ta), len(tb))
    return ta + (0,) * (width - len(ta)) < tb + (0,) * (width - len(tb))


def compile_pattern(pattern):
    """'/containers/{id}/json' -> regex; '{name:.*}' takes a custom regex (for image names with '/')."""
    if not pattern.startswith("/"):
        raise ValueError("route pattern must start with '/': %r" % pattern)
    out, pos, names = [], 0, []
    for match in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos : match.start()]))
        name, custom = match.group(1), match.group(2)
        if name in names:
            raise ValueError("duplicate parameter %r in %r" % (name, pattern))
        names.append(name)
        out.append("(?P<%s>%s)" % (name, custom or "[^/]+"))
        pos = match.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$")


class Route:
    __slots__ = ("method", "pattern", "regex", "handler")

    def __init__(self, method, pattern, handler):
        self.method = method.upper()
        self.pattern = pattern
        self.regex = compile_pattern(pattern)
        self.handler = handler


class Router:
    """Resources register handlers here; the HTTP server calls the router with each request.

    A handler is `handler(req)` and returns a dict/list (sent as JSON 200), a
    Response, or None (204, unless the handler already streamed or hijacked).
    Routes are tried in registration order, so register literal paths such as
    /images/json before catch-alls such as /images/{name:.*}/json.
    """

    def __init__(self, max_version=API_VERSION, min_version=MIN_API_VERSION):
        self.max_version = max_version
        self.min_version = min_version
        self.routes = []

    def add(self, method, pattern, handler):
        route = Route(method, pattern, handler)
        self.routes.append(route)
        return route

    def route(self, method, pattern):
        """Decorator form of add()."""

        def decorate(handler):
            self.add(method, pattern, handler)
            return handler

        return decorate

    def split_version(self, path):
        """('/v1.41/info') -> ('1.41', '/info'); unversioned paths get the server's version.

        Raises InvalidParameter for versions outside [min_version, max_version].
        """
        match = _VERSION_PREFIX.match(path)
        if not match:
            return self.max_version, path
        version, rest = match.group(1), match.group(2)
        if version_less(self.max_version, version):
            raise InvalidParameter(
                "client version %s is too new. Maximum supported API version is %s" % (version, self.max_version)
            )
        if version_less(version, self.min_version):
            raise InvalidParameter(
                "client version %s is too old. Minimum supported API version is %s, "
                "please upgrade your client to a newer version" % (version, self.min_version)
            )
        return version, rest

    def resolve(self, method, path):
        """-> (route, params, api_version). Unknown path or method -> NotFound('page not found')."""
        version, rest = self.split_version(path)
        method = method.upper()
        for route in self.routes:
            if route.method != method:
                continue
            match = route.regex.match(rest)
            if match:
                return route, match.groupdict(), version
        # moby answers a wrong method the same way as an unknown path.
        raise NotFound("page not found")

    def __call__(self, req):
        route, params, version = self.resolve(req.method, req.path)
        req.params = params
        req.api_version = version
        req.route = route.pattern
        return route.handler(req)
