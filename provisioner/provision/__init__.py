"""Provisioning: after a driver hands over an SSH-reachable host, install and start the engine.

Steps: detect the OS, make sure python3 is there, set the hostname, push the engine bundle,
certs and config to /etc/dockyard, render the service for the host's init system, (re)start it.
Waiting for /_ping over mutual TLS is the caller's job (it needs the client certs).
Nothing here deletes containers, images or volumes: only files under /etc/dockyard, the bundle
and the service definition are rewritten.
"""

import hashlib
import shlex

import templates

from ..engine_bundle import build_bundle
from . import initsys, osinfo

REMOTE_CA = initsys.CONFIG_DIR + "/ca.pem"
REMOTE_CERT = initsys.CONFIG_DIR + "/server.pem"
REMOTE_KEY = initsys.CONFIG_DIR + "/server-key.pem"
SOCKET = "unix:///run/dockyard/engine.sock"


def engine_config(engine_options, port):
    """The engine's config file (engine.json) from the machine's EngineOptions."""
    opts = {}
    for item in engine_options.get("ArbitraryFlags", []):
        key, sep, value = item.partition("=")
        opts[key.lstrip("-")] = value if sep else "true"
    # The engine on its own pulls only from loopback and --insecure-registry hosts; a provisioned
    # machine is meant to pull from Docker Hub like dockerd, unless the user says otherwise.
    opts.setdefault("registry-pull", "all")
    return {
        "hosts": [SOCKET, f"tcp://0.0.0.0:{port}"],
        "tlsverify": True,
        "tlscacert": REMOTE_CA,
        "tlscert": REMOTE_CERT,
        "tlskey": REMOTE_KEY,
        "labels": list(engine_options.get("Labels", [])),
        "storage-driver": engine_options.get("StorageDriver") or "overlay2",
        "insecure-registries": list(engine_options.get("InsecureRegistry", [])),
        "registry-mirrors": list(engine_options.get("RegistryMirror", [])),
        "opts": opts,
    }


def set_hostname(session, name):
    q = shlex.quote(name)
    session.run(
        f"hostname {q} 2>/dev/null || true; printf '%s\\n' {q} > /etc/hostname; "
        f"if grep -q '^127\\.0\\.1\\.1[[:space:]]' /etc/hosts; then "
        f"sed -i 's/^127\\.0\\.1\\.1[[:space:]].*/127.0.1.1 {name}/' /etc/hosts; "
        f"else printf '127.0.1.1 %s\\n' {q} >> /etc/hosts; fi",
        sudo=True,
    )


def remote_sha256(session, path):
    r = session.run(f"sha256sum {shlex.quote(path)} 2>/dev/null", sudo=True, check=False)
    return r.stdout.split()[0] if r.exit_status == 0 and r.stdout else ""


def push_certs(session, ca_path, server_cert_path, server_key_path):
    session.run(f"mkdir -p {initsys.CONFIG_DIR} && chmod 0755 {initsys.CONFIG_DIR}", sudo=True)
    for local, remote, mode in (
        (ca_path, REMOTE_CA, 0o644),
        (server_cert_path, REMOTE_CERT, 0o644),
        (server_key_path, REMOTE_KEY, 0o600),
    ):
        with open(local, "rb") as f:
            session.put_bytes(f.read(), remote, mode=mode, sudo=True)


def push_bundle(session, cache_dir, log):
    """Upload the engine bundle unless the host already has this exact file. Returns its sha256."""
    path, digest = build_bundle(cache_dir)
    if remote_sha256(session, initsys.BUNDLE_PATH) != digest:
        log("Copying the engine to the remote machine...")
        session.run("mkdir -p /usr/local/lib/dockyard", sudo=True)
        with open(path, "rb") as f:
            session.put_bytes(f.read(), initsys.BUNDLE_PATH, mode=0o755, sudo=True)
    return digest


def push_config(session, engine_options, port):
    text = templates.render("engine.json.j2", config=engine_config(engine_options, port))
    session.put_bytes(text.encode(), initsys.CONFIG_PATH, mode=0o644, sudo=True)
    return hashlib.sha256(text.encode()).hexdigest()


class HostFacts:
    """What provisioning learned about the host; stored in config.json."""

    def __init__(self, osinfo_, python, init):
        self.os, self.python, self.init = osinfo_, python, init

    def to_dict(self):
        return {"OS": self.os.pretty_name, "OSFamily": self.os.family, "Python": self.python, "Init": self.init}


def prepare_host(session, machine_name, log, set_host_name=True):
    log("Detecting the operating system of the host...")
    info = osinfo.detect(session)
    log(f"Provisioning with {info.pretty_name} ({info.family} family)...")
    python = osinfo.ensure_python(session, info, log)
    if set_host_name:
        set_hostname(session, machine_name)
    return HostFacts(info, python, initsys.detect(session))


def install_engine(session, facts, machine_name, engine_options, port, ca, server_cert, server_key,
                   cache_dir, log):
    """Push bundle, certs, config and service; restart the engine. Returns the bundle digest."""
    digest = push_bundle(session, cache_dir, log)
    log("Copying certs to the remote machine...")
    push_certs(session, ca, server_cert, server_key)
    log("Setting the engine configuration on the remote machine...")
    push_config(session, engine_options, port)
    service = initsys.for_host(facts.init, session, machine_name, facts.python, engine_options.get("Env", []))
    service.install()
    service.restart()
    return digest


def service_for(session, facts_dict, machine_name, engine_options):
    """The init-system handle for an already provisioned host (from the stored facts)."""
    return initsys.for_host(facts_dict.get("Init", "none"), session, machine_name,
                            facts_dict.get("Python", "python3"), engine_options.get("Env", []))


def engine_logs(session, facts_dict, machine_name, engine_options, lines=30):
    try:
        return service_for(session, facts_dict, machine_name, engine_options).logs(lines)
    except Exception as e:  # logs are a diagnostic aid; never hide the real error behind this one
        return f"(could not read the engine log: {e})"

