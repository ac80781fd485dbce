"""POST /auth (`docker login`): the credentials are checked against the registry, nothing is stored."""

from __future__ import annotations

from dockyard.engine.api import schema
from dockyard.engine.api.errors import ApiError
from dockyard.engine.config import registry_certs_dirs
from dockyard.engine.errors import InvalidParameter
from dockyard.engine.images import push

AUTH_BODY = schema.Obj(
    "AuthConfig",
    {
        "username": schema.Str(),
        "password": schema.Str(),
        "serveraddress": schema.Str(),
        "email": schema.Str(),
        "auth": schema.Str(),
        "identitytoken": schema.Str(),
        "registrytoken": schema.Str(),
    },
)


def register(router, engine):
    router.add("POST", "/auth", login)


def login(req):
    body = req.json(default=None, schema=AUTH_BODY)
    if not isinstance(body, dict):
        raise InvalidParameter("a JSON body with username, password and serveraddress is required")
    cfg = req.engine.config
    ok, reason = push.login(
        {k: v for k, v in body.items() if isinstance(v, str)},
        cfg.insecure_registries,
        policy=(cfg.opts or {}).get("registry-pull", "local"),
        certs_dirs=registry_certs_dirs(cfg),
    )
    if not ok:
        raise ApiError(reason, status=401)
    return {"Status": "Login Succeeded", "IdentityToken": ""}
