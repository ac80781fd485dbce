"""Read-only commands: ls, env, config, inspect, ip, url, status, active, version."""

import json
import os
import sys

import click

from dockyard import __version__
from dockyard.drivers.base import State
from dockyard.provisioner.cli import filters as ls_filters
from dockyard.provisioner.cli import gotemplate, listing, shells, sshenv, tables
from dockyard.provisioner.cli.common import (
    complete_filters,
    complete_machines,
    complete_shells,
    load,
    many_names,
    one_name,
    store_of,
)
from dockyard.provisioner.core import engine_client, pki
from dockyard.provisioner.core.errors import CertError, DockyardError, EngineUnreachable, HostNotRunning, UsageError
from dockyard.provisioner.machines import cluster
from dockyard.provisioner.provision import bundle

SECRET_WORDS = ("secret", "token", "password", "accesskey", "apikey", "credential")


@click.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only show machine names.")
@click.option(
    "--filter",
    "filter_",
    multiple=True,
    metavar="KEY=VALUE",
    help="Filter: driver, state, name (regex), label (KEY=VALUE). Same key OR'ed, different keys AND'ed.",
    shell_complete=complete_filters,
)
@click.option(
    "-t",
    "--timeout",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Seconds to wait for each machine's state.",
)
@click.option("-f", "--format", "format_", help="Go template, 'table ...' for a header, or 'json'.")
@click.pass_context
def ls(ctx, quiet, filter_, timeout, format_):
    """List machines."""
    store = store_of(ctx)
    filters = ls_filters.parse_filters(list(filter_))
    names = sorted(store.names(), key=tables.natural_sort_key)
    # Filters that need no state are applied from the stored configs first: cheap, and a dead
    # host that is filtered out never costs its timeout.
    static = {k: v for k, v in filters.items() if k != "state"}
    if static:
        names = [n for n in names if ls_filters.match(listing.stored_item(store, n), static)]
    builds: dict[str, str] = {}
    if quiet and not ls_filters.needs_state(filters):
        out = "".join(n + "\n" for n in names)
    else:
        rows = listing.gather(store, names, timeout, builds=builds)
        if "state" in filters:
            rows = [r for r in rows if ls_filters.match(r, {"state": filters["state"]})]
        out = tables.format_ls(rows, fmt=format_, quiet=quiet)
    if out:
        click.echo(out, nl=not out.endswith("\n"))
    if not quiet and any(builds.values()):
        _warn_outdated(builds)


def _warn_outdated(builds):
    try:
        current = bundle.source_digest()  # ~0.1 s: only paid when a dockyard engine answered
    except DockyardError:  # no engine sources next to this client: nothing to compare with
        return
    names = listing.outdated_engines(builds, current)
    if names:
        click.echo(listing.outdated_warning(names), err=True)


def _tls_check(m):
    """env/config: one TLS handshake with a short timeout; clear messages instead of raw x509 errors."""
    if not m.driver.provisions:
        return
    state = m.state()
    if state == State.ERROR:
        raise DockyardError(f"Error checking TLS connection: {m.error_text()}")
    if state != State.RUNNING:
        raise DockyardError("Error checking TLS connection: Host is not running")
    if m.cert_matches_ip() is False:
        raise CertError(
            f"Error checking TLS connection: the machine's IP is now {m.ip()}, which its server certificate "
            f"does not cover. Run 'dockyard provision {m.name}' (or 'dockyard regenerate-certs {m.name}') "
            "to re-issue it; containers are kept."
        )
    try:
        engine_client.ping(m.url(), m.tls_files(), timeout=5)
    except CertError as e:
        raise CertError(
            f"Error checking TLS connection: {e}\n"
            f"You can attempt to regenerate them using 'dockyard regenerate-certs {m.name}' "
            "(containers, images and volumes are kept)."
        ) from None
    except EngineUnreachable as e:
        raise EngineUnreachable(f"Error checking TLS connection: {e}") from None


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.option(
    "--shell",
    help="Shell to format for: bash, zsh, fish, powershell, cmd, tcsh, emacs (default: detect).",
    shell_complete=complete_shells,
)
@click.option("-u", "--unset", is_flag=True, help="Print commands that unset the variables.")
@click.option("--no-proxy", is_flag=True, help="Add the machine's IP to NO_PROXY.")
@click.option("--swarm", is_flag=True, hidden=True)
@click.option("--ssh", "over_ssh", is_flag=True, help="DOCKER_HOST=ssh://user@ip:port instead of TLS on tcp://.")
@click.pass_context
def env(ctx, name, shell, unset, no_proxy, swarm, over_ssh):
    """Print the commands that point the docker CLI at a machine."""
    store = store_of(ctx)
    if not shell:
        shell, guessed = shells.detect_shell(os.environ)
        if guessed:
            click.echo(f"# $SHELL is not set: printing {shell} syntax (use --shell to choose)", err=True)
    hint = shells.argv_hint(["dockyard"] + sys.argv[1:])
    if unset:
        if name:
            raise UsageError("Error: Expected no machine name when the -u flag is present")
        names = ["DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME"]
        if no_proxy:
            names.append(shells.no_proxy_value(os.environ, "")[0])
        click.echo(shells.format_unset(shell, names, hint), nl=False)
        return
    m = load(store, one_name(store, (name,) if name else ()))
    if swarm:  # any reachable manager of the machine's swarm
        m = cluster.manager_for_env(m, store.names(), lambda n: load(store, n))
    if over_ssh:
        click.echo(_ssh_env(m, shell, hint, no_proxy), nl=False)
        return
    _tls_check(m)
    variables = [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_HOST", m.url()),
        ("DOCKER_CERT_PATH", m.dir),
        ("DOCKER_MACHINE_NAME", m.name),
    ]
    if no_proxy:
        variables.append(shells.no_proxy_value(os.environ, m.ip()))
    click.echo(shells.format_env(shell, variables, hint), nl=False)


def _ssh_env(m, shell, hint, no_proxy):
    """env --ssh: unset the TLS variables, DOCKER_HOST=ssh://..., and the ssh config that makes it work."""
    if not m.driver.provisions:
        raise UsageError(f'machine "{m.name}" uses the {m.driver.name} driver, which has no SSH access')
    if m.state() != State.RUNNING:
        raise HostNotRunning(m.name)
    # Lazy: paramiko (under ssh and ssh_system) is slow to import; only this form of env needs it.
    from dockyard.provisioner.core.ssh import pin_host_key
    from dockyard.provisioner.core.ssh_system import system_ssh_argv

    target = m.ssh_target()
    pin_host_key(target)  # a no-op once pinned; the config below names the pinned key
    path = sshenv.write_ssh_config(m.dir, sshenv.ssh_config_text(m.name, target, system_ssh_argv(target, [])))
    variables = [("DOCKER_HOST", sshenv.ssh_url(target)), ("DOCKER_MACHINE_NAME", m.name)]
    if no_proxy:
        variables.append(shells.no_proxy_value(os.environ, m.ip()))
    notes = [
        f"The docker CLI logs in with your ssh; {path} gives it this machine's key and pinned host key.",
        "Once, at the top of ~/.ssh/config, add:",
        sshenv.include_line(os.path.dirname(m.dir)),
    ]
    return (
        shells.format_unset_and_env(shell, ["DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"], variables)
        + shells.format_comments(shell, notes)
        + shells.usage_hint(shell, hint)
    )


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.option("--swarm", is_flag=True, hidden=True)
@click.pass_context
def config(ctx, name, swarm):
    """Print the docker CLI flags for a machine."""
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    _tls_check(m)
    tls = m.tls_files()
    click.echo(shells.format_config(tls.ca, tls.cert, tls.key, m.url()), nl=False)


def _is_secret(key):
    # References to secrets (the keyring entry, where it lives) are not secrets themselves.
    if key.endswith(("Ref", "Source", "ClientToken")):
        return False
    return any(w in key.lower() for w in SECRET_WORDS)


def redact(value):
    if isinstance(value, dict):
        return {k: ("********" if _is_secret(k) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def inspect_data(m):
    """config.json as stored, secrets redacted, store paths made absolute, plus cert expiry."""
    data = json.loads(json.dumps(m.config))
    data["Driver"] = m.driver.to_config()
    store = m.store
    auth = data.get("HostOptions", {}).get("AuthOptions", {})
    for k, v in list(auth.items()):
        if k.endswith("Path") or k == "CertDir":
            if isinstance(v, str) and v and not k.endswith("RemotePath"):
                auth[k] = store.abs(v)
    certs = {}
    for label, path in (("CA", m.cert_paths.ca), ("Client", m.path("cert.pem")), ("Server", m.path("server.pem"))):
        if os.path.exists(path):
            try:
                certs[label] = pki.cert_info(path)
            except DockyardError as e:
                certs[label] = {"Error": str(e)}
    data["Certificates"] = certs
    published_ports = getattr(m.driver, "published_ports", None)  # local VMs that forward containers' ports
    if callable(published_ports):
        data["PublishedPorts"] = published_ports()
    return redact(data)


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.option("-f", "--format", "format_", help="Go template over the JSON keys, or 'json'.")
@click.pass_context
def inspect(ctx, name, format_):
    """Show a machine's configuration as JSON."""
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    data = inspect_data(m)
    if not format_:
        click.echo(json.dumps(data, indent=4))
    elif format_ == "json":
        click.echo(json.dumps(data))
    else:
        click.echo(gotemplate.render(format_, data))


@click.command()
@click.argument("names", nargs=-1, shell_complete=complete_machines)
@click.pass_context
def ip(ctx, names):
    """Print machines' IP addresses."""
    store = store_of(ctx)
    for n in many_names(store, names):
        click.echo(load(store, n).ip())


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.pass_context
def url(ctx, name):
    """Print a machine's engine URL."""
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    if m.state() != State.RUNNING:
        raise HostNotRunning(m.name)
    click.echo(m.url())


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.pass_context
def status(ctx, name):
    """Print a machine's state (exit 0 whatever the state)."""
    store = store_of(ctx)
    m = load(store, one_name(store, (name,) if name else ()))
    try:
        click.echo(str(m.state()))
    except DockyardError as e:
        raise DockyardError(f"error getting state for host {m.name}: {e}") from None


@click.command()
@click.option("-t", "--timeout", type=click.IntRange(min=1), default=10, show_default=True)
@click.argument("extra", nargs=-1)
@click.pass_context
def active(ctx, timeout, extra):
    """Print the machine that DOCKER_HOST points at."""
    if extra:
        raise UsageError("Error: Too many arguments given")
    store = store_of(ctx)
    rows = listing.gather(store, sorted(store.names(), key=tables.natural_sort_key), timeout)
    for r in rows:
        if r.Active == "*":
            click.echo(r.Name)
            return
    if any(r.State == str(State.TIMEOUT) for r in rows):
        raise DockyardError("Error getting active host: timeout")
    raise DockyardError("No active host found")


@click.command()
@click.argument("name", required=False, shell_complete=complete_machines)
@click.pass_context
def version(ctx, name):
    """Print dockyard's version, or a machine's engine version."""
    if not name:
        click.echo(f"dockyard version {__version__}")
        return
    store = store_of(ctx)
    m = load(store, name)
    if m.state() != State.RUNNING:
        raise HostNotRunning(m.name)
    click.echo(engine_client.version(m.url(), m.tls_files(), timeout=10).get("Version", "Unknown"))
