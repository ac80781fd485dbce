"""`dockyard create`: the shared engine/TLS flags plus the chosen driver's own flags."""

import contextlib
import json
import os
import re
import shutil

import click

from dockyard.drivers import registry
from dockyard.provisioner.cli.common import complete_drivers, info, store_of
from dockyard.provisioner.cli.context import context_after_create
from dockyard.provisioner.cli.progress import renderer
from dockyard.provisioner.core import engine_client
from dockyard.provisioner.core.errors import DockyardError, PreCreateCheckError, UsageError
from dockyard.provisioner.machines import batch, cluster, machine

DRIVER_ENV = ("DOCKYARD_DRIVER", "MACHINE_DRIVER")
DEFAULT_NAME = "default"
INSTALL_HINT = (
    "no local VM driver found: install QEMU (Debian/Ubuntu: apt-get install qemu-system qemu-utils; "
    "Fedora: dnf install qemu-kvm qemu-img) or VirtualBox, or choose a driver with -d"
)


def local_driver():
    """The driver `create` uses when none is given: qemu when qemu-system-<arch> is installed, else
    virtualbox when VBoxManage is, else None."""
    from dockyard.drivers.qemu.settings import host_binary  # lazy: only create needs it

    if shutil.which(os.environ.get("QEMU_BINARY") or host_binary()):
        return "qemu"
    if shutil.which("VBoxManage"):
        return "virtualbox"
    return None


def _driver_from_args(args):
    """Find -d/--driver before click parses, so only that driver's flags are added (as Docker Machine)."""
    for i, a in enumerate(args):
        if a in ("-d", "--driver") and i + 1 < len(args):
            return args[i + 1]
        for prefix in ("--driver=", "-d="):
            if a.startswith(prefix):
                return a[len(prefix) :]
        if a.startswith("-d") and len(a) > 2 and not a.startswith("--"):
            return a[2:]
    for env in DRIVER_ENV:
        if os.environ.get(env):
            return os.environ[env]
    return local_driver()


LOUD_LINE = re.compile(r"^(\(\S+\) )?\s*(warning|error)\b", re.IGNORECASE)
"""What --quiet still shows (on stderr): warnings and errors, also as a batch prints them ("(NAME) Error: ...")."""


class QuietLog:
    """create --quiet's progress channel: keeps the last line (printed at the end), passes warnings to stderr."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, line: str) -> None:
        if LOUD_LINE.match(line):
            click.echo(line, err=True)
        else:
            self.last = line


def engine_warnings(m) -> list[str]:
    """The engine's own warnings once it runs (/info Warnings: the vfs storage fallback, cgroup controllers it
    misses...), each as one line; a machine whose engine dockyard did not install has none to show."""
    if not m.driver.provisions:
        return []
    try:
        status, _, body = engine_client.request(m.url(), m.tls_files(), "GET", "/info", timeout=10)
        if status != 200:
            raise DockyardError(f"HTTP {status}")
        data = json.loads(body)
        found = (data.get("Warnings") if isinstance(data, dict) else None) or []
    except (DockyardError, ValueError) as e:
        return [f"Warning: cannot read the engine's warnings (GET /info): {e}"]
    lines = [" ".join(str(w).split()) for w in found if str(w).strip()]
    return [line if LOUD_LINE.match(line) else f"WARNING: {line}" for line in lines]


def show_engine_warnings(m, prefix: str = "") -> None:
    """On stderr, with or without --quiet: they say what will not work as on Docker."""
    for line in engine_warnings(m):
        click.echo(prefix + line, err=True)


def _driver_option(flag):
    kwargs = dict(help=flag.help, envvar=flag.envvar, show_envvar=bool(flag.envvar))
    if flag.is_flag:
        return click.Option([f"--{flag.name}"], is_flag=True, default=bool(flag.default), **kwargs)
    if flag.multiple:
        return click.Option([f"--{flag.name}"], multiple=True, type=flag.type, **kwargs)
    return click.Option(
        [f"--{flag.name}"], type=flag.type, default=flag.default, show_default=flag.default not in (None, ""), **kwargs
    )


class CreateCommand(click.Command):
    def parse_args(self, ctx, args):
        if not hasattr(self, "_shared_params"):
            self._shared_params = list(self.params)
        self.params = list(self._shared_params)
        name = _driver_from_args(args)
        if name:
            try:
                cls = registry.get(name)
            except Exception:
                cls = None  # reported with the proper message when the command runs
            if cls is not None:
                self.params.extend(_driver_option(f) for f in cls.flags)
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter):
        super().format_help(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text(
            "Driver flags are shown by: dockyard create -d DRIVER --help. Drivers: " + ", ".join(registry.names())
        )


def _kv_list(values, what):
    for v in values:
        if "=" not in v or v.startswith("="):
            raise UsageError(f'invalid {what} "{v}": expected KEY=VALUE')
    return list(values)


@click.command(cls=CreateCommand, context_settings={"ignore_unknown_options": False})
@click.argument("names", nargs=-1)
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 100),
    default=None,
    metavar="N",
    help="Create N machines named NAME-1..NAME-N, in parallel.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 32),
    default=batch.DEFAULT_CONCURRENCY,
    show_default=True,
    help="How many machines to create at once (several names or -n).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=lambda ctx, _param, value: ctx.meta.__setitem__("quiet", value),
    help="Print only errors, warnings (on stderr) and the final line.",
)
@click.option(
    "-d",
    "--driver",
    envvar=list(DRIVER_ENV),
    help="Driver that makes the machine.",
    metavar="DRIVER",
    shell_complete=complete_drivers,
)
@click.option(
    "--engine",
    type=click.Choice(["dockyard", "docker"]),
    default="dockyard",
    show_default=True,
    help="Engine to run on the machine: dockyard's own, or Docker Engine (dockerd, installed if missing).",
)
@click.option("--engine-opt", multiple=True, help="Engine option KEY=VALUE (repeatable).")
@click.option("--engine-env", multiple=True, help="Environment variable KEY=VALUE for the engine (repeatable).")
@click.option("--engine-label", multiple=True, help="Engine label KEY=VALUE (repeatable).")
@click.option("--engine-insecure-registry", multiple=True, help="Insecure registry the engine may use (repeatable).")
@click.option(
    "--engine-registry-mirror", multiple=True, envvar="ENGINE_REGISTRY_MIRROR", help="Registry mirror (repeatable)."
)
@click.option(
    "--engine-storage-driver",
    default="",
    help="Engine storage driver (default: overlay2, or vfs with a warning where the host cannot hold overlayfs; "
    "--engine docker: overlay2).",
)
@click.option(
    "--engine-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Engine TCP port (default 2376, or the driver's own flag).",
)
@click.option("--tls-san", multiple=True, help="Extra subject alternative name for the server cert (repeatable).")
@click.option(
    "--no-docker-context",
    is_flag=True,
    expose_value=False,
    callback=lambda ctx, _param, value: ctx.meta.__setitem__("no_docker_context", value),
    help='Do not create the docker context "dockyard-NAME" (made by default when the docker CLI is installed).',
)
@click.option("--swarm", "swarm_flag", is_flag=True, help="Make the machine a swarm node (with --swarm-join).")
@click.option("--swarm-master", is_flag=True, help="Start a new swarm with this machine as its manager.")
@click.option("--swarm-join", metavar="MANAGER", help="Join the swarm that machine MANAGER manages.")
@click.option("--swarm-manager", is_flag=True, help="Join as a manager instead of a worker.")
@click.option("--swarm-opt", multiple=True, help="swarm init option KEY=VALUE (repeatable).")
@click.option("--swarm-join-opt", multiple=True, help="swarm join option KEY=VALUE (repeatable).")
@click.option("--swarm-discovery", hidden=True)
@click.option("--swarm-image", hidden=True)
@click.option("--swarm-strategy", hidden=True)
@click.option("--swarm-host", hidden=True)
@click.option("--swarm-addr", hidden=True)
@click.option("--swarm-experimental", is_flag=True, hidden=True)
@click.pass_context
def create(
    ctx,
    names,
    count,
    parallel,
    driver,
    engine,
    engine_opt,
    engine_env,
    engine_label,
    engine_insecure_registry,
    engine_registry_mirror,
    engine_storage_driver,
    engine_port,
    tls_san,
    swarm_flag,
    swarm_master,
    swarm_join,
    swarm_manager,
    swarm_opt,
    swarm_join_opt,
    swarm_discovery,
    swarm_image,
    swarm_strategy,
    swarm_host,
    swarm_addr,
    swarm_experimental,
    **driver_options,
):
    """Create a machine (or several: NAME... or -n N NAME).

    With no NAME the machine is "default"; with no -d a local VM: qemu when it is installed, else
    virtualbox ($DOCKYARD_DRIVER sets another default)."""
    names = batch.expand_names(names or (DEFAULT_NAME,), count)
    driver = driver or local_driver()
    if not driver:
        raise PreCreateCheckError(INSTALL_HINT)
    registry.get(driver)  # DriverNotFound with the list of known drivers
    labels = _kv_list(engine_label, "--engine-label")
    if f"provider={driver}" not in labels:
        labels.append(f"provider={driver}")
    engine_options = {
        "ArbitraryFlags": _kv_list(engine_opt, "--engine-opt"),
        "Env": _kv_list(engine_env, "--engine-env"),
        "InsecureRegistry": list(engine_insecure_registry),
        "Labels": labels,
        "RegistryMirror": list(engine_registry_mirror),
        "StorageDriver": engine_storage_driver,
        "TlsVerify": True,
    }
    if engine_port:
        engine_options["Port"] = engine_port
    swarm = cluster.options_from_flags(
        swarm_flag=swarm_flag,
        master=swarm_master,
        manager=swarm_manager,
        join=swarm_join,
        opts=swarm_opt,
        join_opts=swarm_join_opt,
        classic={
            "swarm-discovery": swarm_discovery,
            "swarm-image": swarm_image,
            "swarm-strategy": swarm_strategy,
            "swarm-host": swarm_host,
            "swarm-addr": swarm_addr,
            "swarm-experimental": swarm_experimental,
        },
        engine=engine,
        names=names,
    )
    store = store_of(ctx)
    with_context = not ctx.meta.get("no_docker_context")
    quiet = QuietLog() if ctx.meta.get("quiet") else None
    if len(names) == 1:
        show = quiet or renderer()
        m = machine.create(
            store, names[0], driver, driver_options, engine_options, list(tls_san), show, engine=engine, swarm=swarm
        )
        final = quiet.last if quiet else ""
        show_engine_warnings(m)
        if with_context:
            context_after_create(m, show)
        if quiet:
            info(final)
        return

    # Several machines starting a new swarm: the first initializes it while the others are created alongside and
    # wait for it before joining (cluster.ManagerGate).
    per_name = cluster.batch_options(swarm, names, swarm_manager) if swarm and swarm["Master"] else {}
    gate = cluster.ManagerGate(names[0]) if per_name else None

    def create_one(name, log):
        # The driver's own progress lines stay unprefixed, as they always were (info, not the batch's log).
        lead = gate is not None and name == gate.manager
        with gate.leading() if gate is not None and lead else contextlib.nullcontext():
            m = machine.create(
                store,
                name,
                driver,
                driver_options,
                json.loads(json.dumps(engine_options)),
                list(tls_san),
                log,
                quiet or info,
                engine=engine,
                swarm=per_name.get(name, swarm),
                swarm_ready=gate.wait if gate is not None and not lead else None,
            )
        show_engine_warnings(m, f"({name}) ")
        if with_context:
            context_after_create(m, log)

    run = batch.Batch(names, create_one, quiet or info, limit=parallel, lead=gate.manager if gate else None)
    failed = run.run()
    if failed:
        raise DockyardError(run.summary())
    info(run.summary())
