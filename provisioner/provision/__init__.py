"""Provisioning: after a driver hands over an SSH-reachable host, install and start the engine.

Steps: detect the OS, make sure python3 is there, set the hostname, push the engine bundle,
certs and config to /etc/dockyard, render the service for the host's init system, (re)start it.
Waiting for /_ping over mutual TLS is the caller's job (it needs the client certs).
Nothing here deletes containers, images or volumes: only files under /etc/dockyard, the bundle
and the service definition are rewritten.
"""

import hashlib
import io
import posixpath
import shlex
import tarfile
import time
from pathlib import Path

from dockyard import __version__, templates
from dockyard.provisioner.provision import dockerengine, initsys, osinfo
from dockyard.provisioner.provision.bundle import build_bundle

REMOTE_CA = initsys.CONFIG_DIR + "/ca.pem"
REMOTE_CERT = initsys.CONFIG_DIR + "/server.pem"
REMOTE_KEY = initsys.CONFIG_DIR + "/server-key.pem"
SOCKET = "unix:///run/dockyard/engine.sock"
# `docker system dial-stdio` for DOCKER_HOST=ssh://: staged under /etc/dockyard on every provision, copied to
# DOCKER_SHIM_PATH only where no other docker CLI exists (a real one already does dial-stdio).
DOCKER_SHIM_STAGED = initsys.CONFIG_DIR + "/docker-dial-stdio"
DOCKER_SHIM_PATH = "/usr/local/bin/docker"
DOCKER_SHIM_MARKER = "dockyard docker dial-stdio shim"


# Every file install_engine may write (the service of each init system included).
INSTALLED_PATHS = (
    initsys.BUNDLE_PATH,
    REMOTE_CA,
    REMOTE_CERT,
    REMOTE_KEY,
    initsys.CONFIG_PATH,
    DOCKER_SHIM_STAGED,
    initsys.Systemd.service_path,
    initsys.OpenRC.service_path,
    initsys.NoInit.service_path,
)


# --engine-opt keys that are settings of the engine itself rather than entries of its "opts" map.
TOP_LEVEL_ENGINE_OPTS = ("userns-remap", "max-concurrent-downloads", "max-concurrent-uploads")


def engine_config(engine_options, port):
    """The engine's config file (engine.json) from the machine's EngineOptions."""
    opts = {}
    for item in engine_options.get("ArbitraryFlags", []):
        key, sep, value = item.partition("=")
        opts[key.lstrip("-")] = value if sep else "true"
    # The engine on its own pulls only from loopback and --insecure-registry hosts; a provisioned
    # machine is meant to pull from Docker Hub like dockerd, unless the user says otherwise.
    opts.setdefault("registry-pull", "all")
    # These --engine-opt keys are the engine's own top-level settings (engine.json), as dockerd's flags are.
    top_level = {key: opts.pop(key) for key in TOP_LEVEL_ENGINE_OPTS if key in opts}
    config = {
        "hosts": [SOCKET, f"tcp://0.0.0.0:{port}"],
        "tlsverify": True,
        "tlscacert": REMOTE_CA,
        "tlscert": REMOTE_CERT,
        "tlskey": REMOTE_KEY,
        "labels": list(engine_options.get("Labels", [])),
        # "" lets the engine choose: overlay2, or vfs (with a warning) where the data-root cannot hold overlayfs.
        "storage-driver": engine_options.get("StorageDriver") or "",
        "insecure-registries": list(engine_options.get("InsecureRegistry", [])),
        "registry-mirrors": list(engine_options.get("RegistryMirror", [])),
        "opts": opts,
    }
    for key, value in top_level.items():
        config[key] = int(value) if key.startswith("max-concurrent-") and value.lstrip("-").isdigit() else value
    return config


def _hostname_script(name):
    q = shlex.quote(name)
    return (
        f"hostname {q} 2>/dev/null || true; printf '%s\\n' {q} > /etc/hostname; "
        f"if grep -q '^127\\.0\\.1\\.1[[:space:]]' /etc/hosts; then "
        f"sed -i 's/^127\\.0\\.1\\.1[[:space:]].*/127.0.1.1 {name}/' /etc/hosts; "
        f"else printf '127.0.1.1 %s\\n' {q} >> /etc/hosts; fi"
    )


def _facts_script(machine_name, set_host_name):
    """One remote command that reports everything provisioning needs to know (and sets the hostname)."""
    parts = [
        "echo '==os-release'; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null",
        f"echo '==python'; ({osinfo.PYTHON_CHECK})",
        f"echo '==init'; {initsys.DETECT}",
        f"echo '==bundle'; sha256sum {initsys.BUNDLE_PATH} 2>/dev/null",
        # what install_engine would write, and whether the engine runs from it (then nothing is rewritten)
        f"echo '==installed'; sha256sum {' '.join(INSTALLED_PATHS)} 2>/dev/null",
        f"echo '==active'; {initsys.Systemd.running_check}",
    ]
    if set_host_name:
        parts.append(_hostname_script(machine_name))
    return "; ".join(parts) + "; true"


def _sections(text):
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("==") and line[2:] in ("os-release", "python", "init", "bundle", "installed", "active"):
            current = line[2:]
            out[current] = []
        elif current:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def push_files(session, files, then=None):
    """Write files onto the host in one round trip: (remote path, bytes, mode) entries travel as one tar,
    are unpacked into a staging dir and renamed into place (atomic per file), then `then` runs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (_, data, mode) in enumerate(files):
            info = tarfile.TarInfo(f"f{i}")
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    moves = []
    for i, (path, _, _) in enumerate(files):
        d, q = shlex.quote(posixpath.dirname(path)), shlex.quote(path)
        # mv within one filesystem is a rename: the staging dir lives next to the target.
        moves.append(
            f'mkdir -p {d} && s=$(mktemp -d {d}/.dockyard.XXXXXX) && tar -xf "$t" -C "$s" f{i} '
            f'&& chown 0:0 "$s/f{i}" && mv -f "$s/f{i}" {q} && rmdir "$s"'
        )
    script = 't=$(mktemp) && cat > "$t" && ' + " && ".join(moves) + '; rc=$?; rm -f "$t"; [ $rc -eq 0 ]'
    if then:
        script += f" && {{ {then}; }}"
    session.run(script, sudo=True, input=buf.getvalue())


def cert_files(ca_path, server_cert_path, server_key_path):
    files = []
    for local, remote, mode in (
        (ca_path, REMOTE_CA, 0o644),
        (server_cert_path, REMOTE_CERT, 0o644),
        (server_key_path, REMOTE_KEY, 0o600),
    ):
        with open(local, "rb") as f:
            files.append((remote, f.read(), mode))
    return files


def push_certs(session, ca_path, server_cert_path, server_key_path, then=None):
    push_files(session, cert_files(ca_path, server_cert_path, server_key_path), then)


def push_bundle(session, cache_dir, log, remote_digest=None):
    """Upload the engine bundle unless the host already has this exact file. Returns its sha256."""
    path, digest = build_bundle(cache_dir)
    if remote_digest is None:
        r = session.run(f"sha256sum {initsys.BUNDLE_PATH} 2>/dev/null", sudo=True, check=False)
        remote_digest = r.stdout.split()[0] if r.exit_status == 0 and r.stdout else ""
    if remote_digest != digest:
        log("Copying the engine to the remote machine...")
        with open(path, "rb") as f:
            push_files(session, [(initsys.BUNDLE_PATH, f.read(), 0o755)])
    return digest


class HostFacts:
    """What provisioning learned about the host; stored in config.json."""

    def __init__(self, osinfo_, python, init, bundle_digest="", installed=None, engine_running=False):
        self.os, self.python, self.init, self.bundle_digest = osinfo_, python, init, bundle_digest
        # {remote path: sha256} of the engine's files already on the host; is its service running (systemd only)
        self.installed = dict(installed or {})
        self.engine_running = engine_running

    def to_dict(self):
        return {"OS": self.os.pretty_name, "OSFamily": self.os.family, "Python": self.python, "Init": self.init}


def prepare_host(session, machine_name, log, set_host_name=True, need_python=True):
    """Detect OS, python3 (installed when missing and need_python: the dockyard engine runs on it) and init."""
    log("Detecting the operating system of the host...")
    r = session.run(_facts_script(machine_name, set_host_name), sudo=True)
    sec = _sections(r.stdout)
    if not sec.get("os-release", "").strip():
        raise osinfo.ProvisionError("cannot read /etc/os-release on the host: unable to detect its OS")
    info = osinfo.classify(osinfo.parse_os_release(sec["os-release"]))
    log(f"Provisioning with {info.pretty_name} ({info.family} family)...")
    python = osinfo.parse_python(sec.get("python", ""))
    if python is None and not need_python:
        python = ""  # Docker Engine does not need python3 on the host
    elif python is None:
        python = osinfo.ensure_python(session, info, log)
    else:
        osinfo.check_python_version(python)
        python = python[0]
    init = sec.get("init", "").strip() or "none"
    bundle = sec.get("bundle", "").split()
    installed = {}
    for line in sec.get("installed", "").splitlines():
        digest, _, path = line.partition("  ")
        if digest and path:
            installed[path] = digest
    running = init == "systemd" and sec.get("active", "").strip() == "yes"
    return HostFacts(info, python, init, bundle[0] if bundle else "", installed, running)


def docker_shim(python: str) -> bytes:
    """The `docker` shim for hosts that run the dockyard engine: `docker system dial-stdio` only."""
    text = templates.render(
        "docker-dial-stdio.sh.j2",
        marker=DOCKER_SHIM_MARKER,
        dockyard_version=__version__,
        socket_path=SOCKET[len("unix://") :],
        python=python or "python3",
    )
    return text.encode()


def docker_shim_install_script(
    target: str = DOCKER_SHIM_PATH,
    staged: str = DOCKER_SHIM_STAGED,
    usual_places: tuple[str, ...] = ("/usr/bin/docker", "/bin/docker", "/snap/bin/docker"),
) -> str:
    """Shell that copies the staged shim to target unless another docker CLI is on the host: one on root's
    PATH or in the usual places, or a target that is not an earlier copy of the shim (never overwritten)."""
    q_target, q_staged, marker = shlex.quote(target), shlex.quote(staged), shlex.quote(DOCKER_SHIM_MARKER)
    usual = " || ".join(f"[ -x {shlex.quote(p)} ]" for p in usual_places) or "false"
    new = shlex.quote(target + ".dockyard-new")
    return (
        f"if [ -e {q_target} ] && ! grep -qF {marker} {q_target}; then :; "
        f'elif d=$(command -v docker) && [ "$d" != {q_target} ]; then :; '
        f"elif {usual}; then :; "
        f"else cp {q_staged} {new} && chmod 0755 {new} && mv -f {new} {q_target}; fi"
    )


def engine_files(init, python, machine_name, engine_options, port, ca, server_cert, server_key, bundle):
    """(remote path, bytes, mode) of everything install_engine writes, and the shell that registers and
    (re)starts the service after them. bundle: the engine bundle's path (build_bundle)."""
    service = initsys.for_host(init, None, machine_name, python, engine_options.get("Env", []))
    config = templates.render("engine.json.j2", config=engine_config(engine_options, port)).encode()
    files = [(initsys.BUNDLE_PATH, Path(bundle).read_bytes(), 0o755)]
    files += cert_files(ca, server_cert, server_key) + [(initsys.CONFIG_PATH, config, 0o644), service.service_file()]
    files.append((DOCKER_SHIM_STAGED, docker_shim(python), 0o755))
    then = f"{docker_shim_install_script()} && {service.register_cmd} && {service.restart_cmd}"
    return files, then


def first_boot_files(init, python, machine_name, engine_options, port, ca, server_cert, server_key, cache_dir):
    """What install_engine would write, for a guest that installs it on its first boot, and the shell that
    starts the engine there without waiting for it; None for init systems without such a command."""
    service = initsys.KINDS[init]
    if not getattr(service, "first_boot_cmd", ""):
        return None
    path, _ = build_bundle(cache_dir)
    files, _ = engine_files(init, python, machine_name, engine_options, port, ca, server_cert, server_key, path)
    return files, f"{docker_shim_install_script()}; {service.first_boot_cmd}"


def already_installed(facts, files):
    """Does the host's engine run from exactly these files (engine_files), so that nothing needs writing?"""
    return facts.engine_running and all(facts.installed.get(p) == hashlib.sha256(d).hexdigest() for p, d, _ in files)


def install_engine(session, facts, machine_name, engine_options, port, ca, server_cert, server_key, cache_dir, log):
    """Push bundle, certs, config and service and (re)start the engine, in one SSH round trip. Returns the bundle
    digest. The bundle travels only when the host's differs (facts.bundle_digest); when every file already is
    on the host (a first boot put them there) and the engine runs from them, nothing is written or restarted."""
    path, digest = build_bundle(cache_dir)
    files, then = engine_files(
        facts.init, facts.python, machine_name, engine_options, port, ca, server_cert, server_key, path
    )
    if already_installed(facts, files):
        log("The engine is already installed and running with this configuration.")
        return digest
    if facts.bundle_digest == digest:
        files = files[1:]
    else:
        log("Copying the engine to the remote machine...")
    log("Copying certs and the engine configuration to the remote machine...")
    log("Starting the engine...")
    push_files(session, files, then=then)
    return digest


def install_docker_engine(
    session, facts, machine_name, engine_options, port, ca, server_cert, server_key, log, swarm=False
):
    """Docker Engine instead of the dockyard engine: install it if missing, push certs and dockerd's config,
    (re)start it. Returns what to store in config.json's Provisioned. swarm: the machine is a swarm node."""
    files, then, stored = dockerengine.configure(session, facts, machine_name, engine_options, port, log, swarm)
    log("Copying certs and the Docker Engine configuration to the remote machine...")
    log("Starting Docker Engine...")
    push_files(session, cert_files(ca, server_cert, server_key) + files, then=then)
    return stored


# How rm takes the engine's service off a host, by init system (initsys.KINDS); errors are ignored so that a
# half-provisioned host is cleaned as far as it goes.
_UNINSTALL_SERVICE = {
    "systemd": (
        f"systemctl disable --now dockyard-engine.service >/dev/null 2>&1; rm -f {initsys.Systemd.service_path}; "
        "systemctl daemon-reload >/dev/null 2>&1"
    ),
    "openrc": (
        f"{initsys.OpenRC.stop_cmd} >/dev/null 2>&1; rc-update del dockyard-engine default >/dev/null 2>&1; "
        f"rm -f {initsys.OpenRC.service_path}"
    ),
    "none": f"[ -x {initsys.NoInit.ctl_path} ] && {initsys.NoInit.stop_cmd} >/dev/null 2>&1",
}


def uninstall_engine_script(init_kind: str) -> str:
    """Shell that stops the dockyard engine and removes what provisioning put on the host: its service, the
    bundle (and the no-init control script), /etc/dockyard, and the docker shim if it is dockyard's. The engine's
    data (containers, images, volumes) and its log stay."""
    service = _UNINSTALL_SERVICE.get(init_kind, _UNINSTALL_SERVICE["none"])
    lib = posixpath.dirname(initsys.BUNDLE_PATH)
    shim, marker = shlex.quote(DOCKER_SHIM_PATH), shlex.quote(DOCKER_SHIM_MARKER)
    return (
        f"{{ {service}; }}; "
        f"rm -f {initsys.BUNDLE_PATH} {initsys.NoInit.ctl_path} && {{ rmdir {lib} 2>/dev/null || true; }} && "
        f"rm -rf {initsys.CONFIG_DIR} && "
        f"{{ if [ -f {shim} ] && grep -qF {marker} {shim}; then rm -f {shim}; fi; }}"
    )


def uninstall_engine(session, init_kind: str) -> None:
    """Take the dockyard engine off the host (see uninstall_engine_script); ProvisionError if the removal fails."""
    result = session.run(uninstall_engine_script(init_kind), sudo=True, check=False)
    if result.exit_status != 0:
        why = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no message"]
        raise osinfo.ProvisionError(f"removing the engine failed on the host (exit {result.exit_status}): {why[0]}")


def service_for(session, facts_dict, machine_name, engine_options, engine=dockerengine.DEFAULT_ENGINE):
    """The handle of the service that runs the machine's engine, for an already provisioned host (from the
    stored facts): restart_cmd, restart(), stop(), logs()."""
    if engine == "docker":
        return dockerengine.service_for(session, facts_dict, machine_name, engine_options)
    return initsys.for_host(
        facts_dict.get("Init", "none"),
        session,
        machine_name,
        facts_dict.get("Python", "python3"),
        engine_options.get("Env", []),
    )


def engine_logs(session, facts_dict, machine_name, engine_options, lines=30, engine=dockerengine.DEFAULT_ENGINE):
    try:
        return service_for(session, facts_dict, machine_name, engine_options, engine).logs(lines)
    except Exception as e:  # logs are a diagnostic aid; never hide the real error behind this one
        return f"(could not read the engine log: {e})"
