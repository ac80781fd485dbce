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


def _systemd_arg(value):
    """Quote one ExecStart= argument: systemd splits on spaces and expands % specifiers and $VARS."""
    text = str(value).replace("%", "%%").replace("$", "$$")
    if text and all(c.isalnum() or c in "-_./:=,+@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_env.filters["shquote"] = lambda v: shlex.quote(str(v))
_env.filters["systemd_quote"] = _systemd_quote
_env.filters["systemd_arg"] = _systemd_arg


def render(name, **context):
    """Render the template `name` (e.g. "engine.service.j2") with context."""
    return _env.get_template(name).render(**context)
