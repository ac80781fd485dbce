"""End to end: DOCKER_HOST=ssh:// with the real docker CLI against a dockyard-engine host (`dockyard env --ssh`).

The docker CLI runs the `ssh` on PATH, which reads the user's ~/.ssh/config. A test must not write root's
~/.ssh, so an `ssh` wrapper first on PATH stands in for that file: it passes `-F` with a config holding only
the `Include` line `dockyard env --ssh` tells the user to add. Everything else is the real thing: the docker
CLI's own ssh argv, the system ssh, the machine's key and pinned host key, and the shim on the host.
"""

import json
import os
import subprocess

import pytest

from dockyard import engine
from dockyard.provisioner import provision
from tests.images import busybox_tar
from tests.integration.conftest import clean_env
from tests.integration.test_generic import create_generic

pytestmark = pytest.mark.integration

UNSET_ALL = "unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH"


def user_ssh(tmp_path, env_text):
    """A bin dir whose `ssh` reads a config holding the Include line from env --ssh (as ~/.ssh/config would)."""
    include = next(line[2:] for line in env_text.splitlines() if line.startswith("# Include "))
    config = tmp_path / "user-ssh-config"
    config.write_text(include + "\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
    wrapper.chmod(0o755)
    return bindir


def docker_over_ssh(env_text, bindir, docker_config, *args, timeout=120):
    """The real docker CLI after `eval "$(dockyard env --ssh NAME)"` (TLS variables set before, to see them go)."""
    script = f'{env_text}\nexec docker "$@"'
    env = clean_env(
        {
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "DOCKER_CONFIG": str(docker_config),
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": "/nonexistent",
        }
    )
    # setsid: no controlling terminal, so an ssh that does not trust the host fails instead of asking
    return subprocess.run(
        ["setsid", "sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_docker_host_ssh_with_the_real_cli(dockyard, make_host, tmp_path):
    host = make_host()
    create_generic(dockyard, host, "s1")

    env_text = dockyard("env", "--shell", "bash", "--ssh", "s1").stdout
    lines = env_text.splitlines()
    assert lines[:4] == [
        "unset DOCKER_TLS_VERIFY;",
        "unset DOCKER_CERT_PATH;",
        f'export DOCKER_HOST="ssh://root@{host.ip}:22"',
        'export DOCKER_MACHINE_NAME="s1"',
    ]
    assert lines[-1] == "# eval $(dockyard --storage-path " + dockyard.store + " env --shell bash --ssh s1)"
    ssh_config = os.path.join(dockyard.store, "machines", "s1", "ssh_config")
    assert f'Match host "{host.ip}" user "root" exec "test %p = 22"' in open(ssh_config).read()
    assert os.stat(ssh_config).st_mode & 0o777 == 0o600

    # The shim is on the host, and refuses anything but dial-stdio with a one-line error.
    assert provision.DOCKER_SHIM_MARKER in dockyard("ssh", "s1", "cat", provision.DOCKER_SHIM_PATH).stdout
    p = dockyard("ssh", "s1", "docker", "ps", check=False)
    assert p.returncode == 1 and "dockyard's dial-stdio shim" in p.stderr

    bindir = user_ssh(tmp_path, env_text)
    docker_config = tmp_path / "docker-config"
    p = docker_over_ssh(env_text, bindir, docker_config, "version", "--format", "{{json .Server}}")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["Version"] == engine.__version__

    p = docker_over_ssh(env_text, bindir, docker_config, "load", "-i", str(busybox_tar()), timeout=300)
    assert p.returncode == 0, p.stderr
    p = docker_over_ssh(env_text, bindir, docker_config, "run", "--rm", "busybox", "sh", "-c", "echo hi; exit 3")
    assert (p.returncode, p.stdout) == (3, "hi\n"), p.stderr
    # stdin through the bridge, and its end (half-close) reaching the container
    p = subprocess.run(
        ["sh", "-c", f'{env_text}\nprintf "a\\nb\\n" | docker run --rm -i busybox wc -l'],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env({"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "DOCKER_CONFIG": str(docker_config)}),
    )
    assert (p.returncode, p.stdout.strip()) == (0, "2"), p.stderr

    # A docker context over ssh:// works the same way.
    p = docker_over_ssh(
        env_text, bindir, docker_config, "context", "create", "s1-ssh", "--docker", f"host=ssh://root@{host.ip}"
    )
    assert p.returncode == 0, p.stderr
    p = docker_over_ssh(UNSET_ALL, bindir, docker_config, "--context", "s1-ssh", "info", "--format", "{{.Name}}")
    assert (p.returncode, p.stdout.strip()) == (0, "s1"), p.stderr

    # Without the machine's ssh config (no Include), ssh does not know the key or the host: the CLI fails.
    (tmp_path / "user-ssh-config").write_text("")
    p = docker_over_ssh(env_text, bindir, docker_config, "version", timeout=120)
    assert p.returncode != 0


def test_ssh_user_with_sudo_and_a_real_docker_left_alone(dockyard, make_host, tmp_path):
    host = make_host()
    create_generic(dockyard, host, "s2", user="tester")  # key login, passwordless sudo; the socket is root's
    env_text = dockyard("env", "--shell", "bash", "--ssh", "s2").stdout
    assert f'export DOCKER_HOST="ssh://tester@{host.ip}:22"' in env_text
    bindir = user_ssh(tmp_path, env_text)
    p = docker_over_ssh(env_text, bindir, tmp_path / "docker-config", "info", "--format", "{{.Name}}")
    assert (p.returncode, p.stdout.strip()) == (0, "s2"), p.stderr

    # A docker CLI that is not dockyard's shim is never overwritten by (re-)provisioning.
    real = "#!/bin/sh\necho the real docker\n"
    dockyard("ssh", "s2", f"printf '{real}' | sudo tee {provision.DOCKER_SHIM_PATH} >/dev/null")
    dockyard("provision", "s2")
    p = dockyard("ssh", "s2", "docker", "anything")
    assert p.stdout == "the real docker\n"
