"""The `docker` dial-stdio shim rendered onto dockyard-engine hosts, its install rule, and `env --ssh` text."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from dockyard.provisioner import provision
from dockyard.provisioner.cli import shells, sshenv
from dockyard.provisioner.core.ssh_target import SSHTarget


@pytest.fixture
def shim(tmp_path):
    path = tmp_path / "docker"
    path.write_bytes(provision.docker_shim(sys.executable))
    path.chmod(0o755)
    return str(path)


def serve_once(path):
    """A unix socket server that reads its client until end of input, then answers and closes: only a
    bridge that half-closes (stdin's end -> shutdown of the write side) ever gets the answer."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = []

    def run():
        conn, _ = srv.accept()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        got.append(data)
        conn.sendall(b"got %d bytes:" % len(data) + data[:16])
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got


def test_shim_is_posix_sh_and_names_what_it_is(shim):
    subprocess.run(["sh", "-n", shim], check=True)
    text = open(shim).read()
    assert text.startswith("#!/bin/sh\n") and provision.DOCKER_SHIM_MARKER in text
    assert "\nsock=/run/dockyard/engine.sock\n" in text


@pytest.mark.parametrize(
    "args",
    [("ps",), ("version",), ("system",), ("system", "dial-stdio", "x"), ("--host",), ("-H", "tcp://1.2.3.4:2375")],
)
def test_shim_refuses_everything_else_with_one_line(shim, args):
    p = subprocess.run([shim, *args], capture_output=True, text=True, timeout=10)
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and "dockyard's dial-stdio shim" in p.stderr


@pytest.mark.parametrize("form", ["--host", "--host=", "-H", "-H="])
def test_shim_bridges_stdin_stdout_to_the_socket_with_half_close(shim, tmp_path, form):
    sock = str(tmp_path / "e.sock")
    t, got = serve_once(sock)
    payload = os.urandom(300_000)
    host = [form + "unix://" + sock] if form.endswith("=") else [form, "unix://" + sock]
    p = subprocess.run([shim, *host, "system", "dial-stdio"], input=payload, capture_output=True, timeout=30)
    t.join(10)
    assert p.returncode == 0, p.stderr
    assert got == [payload]
    assert p.stdout == b"got 300000 bytes:" + payload[:16]


def test_shim_reports_an_engine_that_is_not_there(shim, tmp_path):
    p = subprocess.run(
        [shim, "-H", f"unix://{tmp_path}/none.sock", "system", "dial-stdio"], capture_output=True, text=True
    )
    assert p.returncode == 1 and "cannot connect to the dockyard engine" in p.stderr


def run_install(tmp_path, existing=None, on_path=False):
    """The install rule with the target, staging file and usual places under tmp_path."""
    target, staged = tmp_path / "usr-local-bin" / "docker", tmp_path / "staged"
    target.parent.mkdir()
    staged.write_text("#!/bin/sh\n# " + provision.DOCKER_SHIM_MARKER + " v2\n")
    if existing is not None:
        target.write_text(existing)
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    if on_path:
        (path_dir / "docker").write_text("#!/bin/sh\necho real\n")
        (path_dir / "docker").chmod(0o755)
    script = provision.docker_shim_install_script(str(target), str(staged), (str(tmp_path / "usual" / "docker"),))
    env = {"PATH": f"{path_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", script], check=True, env=env)
    return target


def test_install_puts_the_shim_where_no_docker_is(tmp_path):
    target = run_install(tmp_path)
    assert "v2" in target.read_text() and os.access(target, os.X_OK)


def test_install_replaces_its_own_earlier_shim(tmp_path):
    target = run_install(tmp_path, existing="#!/bin/sh\n# " + provision.DOCKER_SHIM_MARKER + " v1\n")
    assert "v2" in target.read_text()


def test_install_never_overwrites_a_real_docker(tmp_path):
    real = "\x7fELF a real docker CLI"
    assert run_install(tmp_path, existing=real).read_text() == real


def test_install_skips_when_another_docker_is_on_path(tmp_path):
    assert not run_install(tmp_path, on_path=True).exists()


def test_ssh_url_and_config_block():
    target = SSHTarget("10.1.2.3", 2222, "ubuntu", "/s/machines/m1/id_rsa", "/s/machines/m1/ssh_host_key", "m1")
    assert sshenv.ssh_url(target) == "ssh://ubuntu@10.1.2.3:2222"
    assert sshenv.ssh_url(SSHTarget("fd00::5")) == "ssh://root@[fd00::5]:22"
    argv = ["ssh", "-F", "/dev/null", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-o", 'UserKnownHostsFile="/s p/kh"', "-o", "IdentitiesOnly=yes", "-i", "/s p/id%1", "-p", "2222"]
    text = sshenv.ssh_config_text("m1", target, argv)
    body = text.splitlines()[2:]
    assert body == [
        'Match host "10.1.2.3" user "ubuntu" exec "test %p = 2222"',
        "\tStrictHostKeyChecking yes",
        '\tUserKnownHostsFile "/s p/kh"',
        "\tIdentitiesOnly yes",
        '\tIdentityFile "/s p/id%%1"',
    ]


def test_include_line_and_comments_per_shell():
    assert sshenv.include_line("/root/.dockyard/machines") == "Include /root/.dockyard/machines/*/ssh_config"
    assert sshenv.include_line("/my store/machines") == 'Include "/my store/machines/*/ssh_config"'
    assert shells.format_comments("bash", ["a", "b"]) == "# a\n# b\n"
    assert shells.format_comments("cmd", ["a"]) == "REM a\n"
    assert shells.format_comments("emacs", ["a"]) == ";; a\n"


def test_env_ssh_needs_a_machine_with_ssh(tmp_path, capsys, monkeypatch):
    from dockyard.provisioner.cli.main import main

    store = str(tmp_path / "store")
    monkeypatch.delenv("DOCKER_HOST", raising=False)

    def run(*args):
        try:
            main(["--storage-path", store, *args])
        except SystemExit as e:
            return e.code, *capsys.readouterr()
        return 0, *capsys.readouterr()

    assert run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")[0] == 0
    code, out, err = run("env", "--ssh", "--shell", "bash", "n1")
    assert code == 1 and out == ""
    assert err.strip() == 'machine "n1" uses the none driver, which has no SSH access'
    assert not os.path.exists(os.path.join(store, "machines", "n1", "ssh_config"))


@pytest.mark.parametrize("quoted", [True, False])
def test_unset_and_env_survive_eval_quoted_or_not(quoted):
    text = shells.format_unset_and_env(
        "bash", ["DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"], [("DOCKER_HOST", "ssh://root@10.0.0.2:22")]
    )
    text += shells.format_comments("bash", ["a comment; with * and $HOME"]) + shells.usage_hint("bash", "x")
    assert text.startswith('unset DOCKER_TLS_VERIFY;\nunset DOCKER_CERT_PATH;\nexport DOCKER_HOST="ssh://')
    sub = '"$(cat "$1")"' if quoted else '$(cat "$1")'
    script = f'eval {sub}; echo "${{DOCKER_TLS_VERIFY-unset}} ${{DOCKER_CERT_PATH-unset}} $DOCKER_HOST"'
    env = {"PATH": os.environ["PATH"], "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/c"}
    for sh in ("bash", "sh"):
        p = subprocess.run(
            [sh, "-c", script, sh, "/dev/stdin"], input=text, capture_output=True, text=True, env=env, check=True
        )
        assert p.stdout == "unset unset ssh://root@10.0.0.2:22\n", (sh, p.stderr)
