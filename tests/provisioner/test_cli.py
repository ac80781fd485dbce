"""The CLI contract without hosts: none-driver machines, error strings, exit codes, ls/inspect/env output."""

import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from tests.cli_runner import cli_runner


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    store = str(tmp_path / "store")
    for k in ("DOCKER_HOST", "DOCKYARD_DRIVER", "MACHINE_DRIVER"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SHELL", "/bin/bash")

    return cli_runner(store, capsys)


def test_version(run):
    code, out, _ = run("version")
    assert code == 0 and out.startswith("dockyard version ")


def test_unknown_command(run):
    code, _, err = run("frobnicate")
    assert code == 1
    assert "'frobnicate' is not a dockyard command" in err


def test_none_driver_lifecycle(run):
    code, out, err = run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")
    assert code == 0, err
    assert run("status", "n1")[1] == "Running\n"
    assert run("url", "n1")[1] == "tcp://192.0.2.10:2376\n"
    assert run("ip", "n1")[1] == "192.0.2.10\n"
    assert run("inspect", "-f", "{{.DriverName}}", "n1")[1] == "none\n"
    assert run("inspect", "-f", "{{json .DriverName}}", "n1")[1] == '"none"\n'
    data = json.loads(run("inspect", "n1")[1])
    assert data["Driver"]["URL"] == "tcp://192.0.2.10:2376"
    assert data["HostOptions"]["EngineOptions"]["Labels"] == ["provider=none"]
    code, out, _ = run("env", "n1")
    assert 'export DOCKER_HOST="tcp://192.0.2.10:2376"' in out
    assert 'export DOCKER_MACHINE_NAME="n1"' in out
    assert "# eval $(dockyard" in out
    code, out, _ = run("env", "--shell", "fish", "n1")
    assert 'set -gx DOCKER_HOST "tcp://192.0.2.10:2376";' in out
    code, out, _ = run("env", "-u")
    assert "unset DOCKER_HOST" in out
    code, _, err = run("env", "-u", "n1")
    assert code == 1 and "Expected no machine name when the -u flag is present" in err
    code, out, _ = run("rm", "-y", "n1")
    assert code == 0 and "Successfully removed n1" in out
    assert not os.path.exists(os.path.join(run.store, "machines", "n1"))


def test_error_strings_and_exit_codes(run):
    code, _, err = run("env", "ghost")
    assert code == 1
    assert err.strip() == (
        'Docker machine "ghost" does not exist. Use "dockyard ls" to list machines. '
        'Use "dockyard create" to add a new one.'
    )
    code, _, err = run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "bad_name")
    assert code == 1 and "Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -" in err
    assert run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "dup")[0] == 0
    code, _, err = run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "dup")
    assert code == 1 and 'Docker machine "dup" already exists' in err
    code, _, err = run("create", "-d", "bogus", "x")
    assert code == 1 and 'Driver "bogus" not found' in err
    code, _, err = run("create", "-d", "none", "x")
    assert code == 1 and "--url option is required" in err
    code, _, err = run("rm")
    assert code == 1 and "Expected to get one or more machine names as arguments" in err
    code, _, err = run("url")
    assert code == 1 and 'No machine name(s) specified and no "default" machine exists' in err
    code, _, err = run("active", "extra")
    assert code == 1 and "Too many arguments given" in err
    code, _, err = run("ls", "--filter", "color=red")
    assert code == 1 and "Unsupported filter key 'color'" in err
    code, _, err = run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "--engine-label", "novalue", "y")
    assert code == 1 and 'invalid --engine-label "novalue"' in err


def test_pre_create_check_exits_3(run, tmp_path):
    code, _, err = run(
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        "127.0.0.1",
        "--generic-ssh-key",
        str(tmp_path / "missing-key"),
        "g1",
    )
    assert code == 3
    assert 'Error with pre-create check: "SSH key does not exist:' in err
    assert not os.path.exists(os.path.join(run.store, "machines", "g1"))  # nothing left behind


def test_default_machine_rule(run):
    run("create", "-d", "none", "--url", "tcp://192.0.2.5:2376", "default")
    assert run("url")[1] == "tcp://192.0.2.5:2376\n"


def _silent_listener():
    """A TCP listener on 127.0.0.1 that accepts and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def loop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=loop, daemon=True).start()
    return srv, stop, conns


def test_ls_filters_format_and_timeout(run):
    srv, stop, conns = _silent_listener()
    try:
        port = srv.getsockname()[1]
        run("create", "-d", "none", "--url", f"tcp://127.0.0.1:{port}", "hang")
        run("create", "-d", "none", "--url", "tcp://127.0.0.1:1", "--engine-label", "env=prod", "a10")
        run("create", "-d", "none", "--url", "tcp://127.0.0.1:1", "a9")
        code, out, _ = run("ls", "-t", "1")
        lines = out.splitlines()
        assert lines[0].split() == ["NAME", "ACTIVE", "DRIVER", "STATE", "URL", "SWARM", "DOCKER", "ERRORS"]
        assert [ln.split()[0] for ln in lines[1:]] == ["a9", "a10", "hang"]  # natural sort
        assert lines[3].split()[:3] == ["hang", "none", "Timeout"]
        assert run("ls", "-q", "--filter", "name=^a")[1].split() == ["a9", "a10"]
        assert run("ls", "-q", "--filter", "label=env=prod")[1].split() == ["a10"]
        assert run("ls", "-q", "--filter", "name=9", "--filter", "name=hang")[1].split() == ["a9", "hang"]
        assert run("ls", "-q", "--filter", "name=a", "--filter", "driver=generic")[1].split() == []
        code, out, _ = run("ls", "-t", "1", "--format", "{{.Name}}:{{.State}}", "--filter", "name=^a")
        assert out.split() == ["a9:Running", "a10:Running"]
        rows = json.loads(run("ls", "-t", "1", "--format", "json", "--filter", "name=a9")[1])
        assert rows[0]["Name"] == "a9" and rows[0]["DockerVersion"] == "Unknown"
    finally:
        stop.set()
        srv.close()
        for c in conns:
            c.close()


def test_shell_completion_script(tmp_path):
    env = dict(os.environ, _DOCKYARD_COMPLETE="bash_source", PYTHONPATH=os.getcwd())
    p = subprocess.run([sys.executable, "-m", "dockyard"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "_dockyard_completion" in p.stdout


def test_machine_names_complete(run):
    run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "alpha")
    run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "beta")
    env = dict(
        os.environ,
        _DOCKYARD_COMPLETE="bash_complete",
        COMP_WORDS=f"dockyard -s {run.store} env al",
        COMP_CWORD="4",
        PYTHONPATH=os.getcwd(),
    )
    p = subprocess.run([sys.executable, "-m", "dockyard"], capture_output=True, text=True, env=env)
    assert p.stdout.split() == ["plain,alpha"]


def test_rm_without_a_terminal_and_without_y_fails_and_says_why(run, monkeypatch):
    import io

    assert run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, nothing to read
    code, out, err = run("rm", "n1")
    assert code == 1
    assert "Are you sure? (y/n): " in out
    assert (
        err.strip() == 'Not removing anything: stdin is not a terminal and gave no "y"; use -y to remove without asking'
    )
    assert os.path.exists(os.path.join(run.store, "machines", "n1"))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # a piped answer still counts
    code, out, _ = run("rm", "n1")
    assert code == 0 and "Successfully removed n1" in out


def test_logs_serial_shows_the_console_log_tail_and_refuses_machines_without_one(run):
    assert run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")[0] == 0
    code, _, err = run("logs", "--serial", "n1")
    assert code == 1 and 'machine "n1" has no serial console log' in err
    code, _, err = run("logs", "n1")
    assert code == 1 and "dockyard did not install its engine, so it has no engine log to show" in err
    with open(os.path.join(run.store, "machines", "n1", "serial.log"), "wb") as f:
        f.write(b"".join(b"line %d\n" % i for i in range(1, 201)) + b"bad \xff byte\n")
    code, out, _ = run("logs", "--serial", "-n", "2", "n1")
    assert code == 0 and out == "line 200\nbad \ufffd byte\n"
    code, out, _ = run("logs", "--serial", "-n", "0", "n1")
    assert out.startswith("line 1\nline 2\n") and out.count("\n") == 201


def complete(store, words):
    """What the bash completion protocol answers for the command line `words` (the last one being typed)."""
    env = dict(
        os.environ,
        _DOCKYARD_COMPLETE="bash_complete",
        COMP_WORDS=" ".join(["dockyard", "-s", store, *words]),
        COMP_CWORD=str(len(words) + 2),
        PYTHONPATH=os.getcwd(),
    )
    p = subprocess.run([sys.executable, "-m", "dockyard"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return [line.split(",", 1)[1] for line in p.stdout.split()]


def test_completion_command_prints_each_shells_script(run):
    for shell, marker in (
        ("bash", "complete -o nosort -F _dockyard_completion dockyard"),
        ("zsh", "#compdef dockyard"),
        ("fish", "complete --no-files --command dockyard"),
    ):
        code, out, _ = run("completion", shell)
        assert code == 0 and marker in out and "_DOCKYARD_COMPLETE" in out
    code, _, err = run("completion", "tcsh")
    assert code == 1 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in err


def test_completion_of_commands_drivers_shells_filter_keys_and_machines(run, tmp_path):
    run("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "alpha")
    assert {"logs", "completion", "ls", "rm"} <= set(complete(run.store, [""]))
    assert complete(run.store, ["create", "-d", "no"]) == ["none"]
    assert "generic" in complete(run.store, ["create", "-d", ""])
    assert complete(run.store, ["env", "--shell", "f"]) == ["fish"]
    assert complete(run.store, ["ls", "--filter", ""]) == ["driver=", "state=", "name=", "swarm=", "label="]
    assert complete(run.store, ["logs", "a"]) == ["alpha"]


def test_debug_shows_driver_and_engine_calls_with_their_time_on_stderr_only(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: the engine call is refused
    assert run("create", "-d", "none", "--url", f"tcp://127.0.0.1:{port}", "n1")[0] == 0
    code, out, err = run("-D", "version", "n1")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert any(re.fullmatch(r"\[\+\d+\.\d{3}s\] driver none\.state\(n1\) = Running in \d+\.\d{3}s", x) for x in lines)
    assert any(
        re.fullmatch(rf"\[\+\d+\.\d{{3}}s\] engine GET tcp://127\.0\.0\.1:{port}/version -> .* after \d+\.\d{{3}}s", x)
        for x in lines
    ), lines
    code, out, err = run("status", "n1")  # without -D: nothing but the answer
    assert (code, out, err) == (0, "Running\n", "")


def test_create_quiet_prints_only_the_final_line(run):
    code, out, err = run("create", "-q", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")
    assert code == 0 and err == ""
    assert out == (
        "To see how to connect your Docker Client to the engine running on this machine, run: dockyard env n1\n"
    )
    code, out, err = run("create", "--quiet", "-d", "none", "--url", "tcp://192.0.2.10:2376", "-n", "2", "b")
    assert code == 0 and err == "" and len(out.splitlines()) == 1, out
    code, out, err = run("create", "-q", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")
    assert code == 1 and out == "" and 'Docker machine "n1" already exists' in err


def test_quiet_passes_warnings_and_errors_to_stderr(capsys):
    from dockyard.provisioner.cli.create import QuietLog

    q = QuietLog()
    for line in ("Creating machine...", "WARNING: overlay is not supported here", "(m2) Error: boom", "done"):
        q(line)
    assert q.last == "done"
    assert capsys.readouterr().err == "WARNING: overlay is not supported here\n(m2) Error: boom\n"


def test_ls_warns_once_on_stderr_about_engines_older_than_this_dockyard(run, monkeypatch):
    from dockyard.provisioner.core import engine_client
    from dockyard.provisioner.provision import bundle

    for name in ("new", "old1", "old2", "tree", "dockerd"):
        run("create", "-d", "none", "--url", f"tcp://{name}.example:2376", name)
    commits = {"new": "abcdef1", "old1": "1234567", "old2": "7654321", "tree": "dev", "dockerd": "a89b842"}
    monkeypatch.setattr(bundle, "source_digest", lambda: "abcdef1" + "0" * 57)

    def version(url, tls, timeout):
        name = url.split("//")[1].split(".")[0]
        platform = "Docker Engine - Community" if name == "dockerd" else "dockyard engine"
        return {"Platform": {"Name": platform}, "Version": "0.1.0", "GitCommit": commits[name]}

    monkeypatch.setattr(engine_client, "version", version)
    code, out, err = run("ls")
    assert code == 0 and len(out.splitlines()) == 6 and "v0.1.0" in out
    assert err == "Warning: the engine on old1, old2 is older than this dockyard's: run 'dockyard upgrade old1 old2'\n"
    assert run("ls", "-q")[2] == ""  # names only, for scripts: no warning
    commits.update(old1="abcdef1", old2="abcdef1")
    assert run("ls")[2] == ""


def test_prune_removes_only_cached_images_no_machine_uses(run, monkeypatch):
    monkeypatch.delenv("DOCKYARD_IMAGE_CACHE", raising=False)
    images = os.path.join(run.store, "cache", "images")
    built = os.path.join(images, "dockyard-guest-0123456789abcdef")
    used = os.path.join(images, "debian", "sha512-" + "a" * 32)
    user = os.path.join(images, "user", "file-" + "b" * 24)
    for d in (built, used, user):
        os.makedirs(d)
        with open(os.path.join(d, "disk.qcow2"), "wb") as f:
            f.write(b"\0" * 8192)
    os.makedirs(os.path.join(images, "half-built.tmp"))  # no disk: not an image, left alone
    with open(os.path.join(images, "debian", "latest.json"), "w") as f:
        f.write("{}")
    assert run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")[0] == 0
    config_path = os.path.join(run.store, "machines", "n1", "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["Driver"]["BaseImage"] = {"disk": os.path.relpath(os.path.join(used, "disk.qcow2"), run.store)}
    with open(config_path, "w") as f:
        json.dump(config, f)

    code, out, _ = run("prune", "--dry-run")
    assert code == 0 and out.count("Would remove") == 2 and os.path.isdir(built) and os.path.isdir(user)
    code, out, _ = run("prune")
    assert code == 0 and out.splitlines()[-1].startswith("Reclaimed ")
    assert f"Removing {built} (" in out and f"Removing {user} (" in out
    assert not os.path.exists(built) and not os.path.exists(user)
    assert os.path.isfile(os.path.join(used, "disk.qcow2"))  # n1's disk is based on it
    assert os.path.isdir(os.path.join(images, "half-built.tmp"))
    assert os.path.isfile(os.path.join(images, "debian", "latest.json"))
    assert run("prune")[1] == "No unused cached images.\n"

    os.makedirs(os.path.join(run.store, "machines", "half"))  # a create before its first save
    os.makedirs(built)
    open(os.path.join(built, "disk.qcow2"), "w").close()
    code, _, err = run("prune")
    assert code == 1 and 'not pruning: cannot tell which image machine "half" uses' in err
    assert os.path.isdir(built)


def test_follow_file_follows_by_name_across_a_new_boots_log(tmp_path):
    from dockyard.provisioner.cli.logs import follow_file

    log = tmp_path / "serial.log"
    log.write_bytes(b"".join(b"boot1 line %d\n" % i for i in range(1, 6)))
    got, stop = [], threading.Event()
    follower = threading.Thread(target=follow_file, args=(str(log), 2, got.append, stop.is_set))
    follower.start()
    try:
        _wait(lambda: b"".join(got) == b"boot1 line 4\nboot1 line 5\n")
        with open(log, "ab") as f:
            f.write(b"boot1 line 6\n")
        _wait(lambda: b"".join(got).endswith(b"boot1 line 6\n"))
        os.replace(log, str(log) + ".prev")  # the next boot: QEMU keeps the old console, starts a new one
        log.write_bytes(b"boot2 line 1\n")
        _wait(lambda: b"".join(got).endswith(b"boot2 line 1\n"))
    finally:
        stop.set()
        follower.join(5)
    assert b"".join(got) == b"boot1 line 4\nboot1 line 5\nboot1 line 6\nboot2 line 1\n"


def _wait(cond, timeout=10):
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_logs_serial_follow_streams_until_ctrl_c(run):
    import signal

    assert run("create", "-d", "none", "--url", "tcp://192.0.2.10:2376", "n1")[0] == 0
    log = os.path.join(run.store, "machines", "n1", "serial.log")
    with open(log, "w") as f:
        f.write("old\nlast\n")
    p = subprocess.Popen(
        [sys.executable, "-m", "dockyard", "--storage-path", run.store, "logs", "--serial", "-f", "-n", "1", "n1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    try:
        assert p.stdout.readline() == b"last\n"
        with open(log, "a") as f:
            f.write("new\n")
        assert p.stdout.readline() == b"new\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 130 and b"Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
