"""Every file rendered onto a host: service units, engine config, cloud-init (jinja2, package data)."""

import shlex

import jinja2

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("dockyard.templates", "."),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,
)


def _systemd_quote(value):
    """Quote one Environment= assignment for a systemd unit."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


_env.filters["shquote"] = lambda v: shlex.quote(str(v))
_env.filters["systemd_quote"] = _systemd_quote


def render(name, **context):
    """Render the template `name` (e.g. "engine.service.j2") with context."""
    return _env.get_template(name).render(**context)
