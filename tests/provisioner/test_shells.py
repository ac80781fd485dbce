"""env and config output: every shell's set and unset lines and hints, shell detection, NO_PROXY, argv."""

import pytest

from dockyard.provisioner.cli.shells import (
    GUESSED_SHELL_NOTE,
    argv_hint,
    detect_shell,
    format_config,
    format_env,
    format_unset,
    no_proxy_value,
    shell_syntax,
)

VARS = [
    ("DOCKER_TLS_VERIFY", "1"),
    ("DOCKER_HOST", "tcp://192.168.99.100:2376"),
    ("DOCKER_CERT_PATH", "/home/u/.docker/machine/machines/default"),
    ("DOCKER_MACHINE_NAME", "default"),
]
NAMES = [name for name, _ in VARS]

# Expected text: Docker Machine's shellCfgSet / shellCfgUnset / GenerateUsageHint with "dockyard".
SET = {
    "bash": (
        'export DOCKER_TLS_VERIFY="1"\n'
        'export DOCKER_HOST="tcp://192.168.99.100:2376"\n'
        'export DOCKER_CERT_PATH="/home/u/.docker/machine/machines/default"\n'
        'export DOCKER_MACHINE_NAME="default"\n'
        "# Run this command to configure your shell: \n"
        "# eval $(dockyard env default)\n"
    ),
    "fish": (
        'set -gx DOCKER_TLS_VERIFY "1";\n'
        'set -gx DOCKER_HOST "tcp://192.168.99.100:2376";\n'
        'set -gx DOCKER_CERT_PATH "/home/u/.docker/machine/machines/default";\n'
        'set -gx DOCKER_MACHINE_NAME "default";\n'
        "# Run this command to configure your shell: \n"
        "# eval (dockyard env --shell=fish default)\n"
    ),
    "powershell": (
        '$Env:DOCKER_TLS_VERIFY = "1"\n'
        '$Env:DOCKER_HOST = "tcp://192.168.99.100:2376"\n'
        '$Env:DOCKER_CERT_PATH = "/home/u/.docker/machine/machines/default"\n'
        '$Env:DOCKER_MACHINE_NAME = "default"\n'
        "# Run this command to configure your shell: \n"
        "# & dockyard env --shell=powershell default | Invoke-Expression\n"
    ),
    "cmd": (
        "SET DOCKER_TLS_VERIFY=1\n"
        "SET DOCKER_HOST=tcp://192.168.99.100:2376\n"
        "SET DOCKER_CERT_PATH=/home/u/.docker/machine/machines/default\n"
        "SET DOCKER_MACHINE_NAME=default\n"
        "REM Run this command to configure your shell: \n"
        "REM \t@FOR /f \"tokens=*\" %i IN ('dockyard env --shell=cmd default') DO @%i\n"
    ),
    "tcsh": (
        'setenv DOCKER_TLS_VERIFY "1";\n'
        'setenv DOCKER_HOST "tcp://192.168.99.100:2376";\n'
        'setenv DOCKER_CERT_PATH "/home/u/.docker/machine/machines/default";\n'
        'setenv DOCKER_MACHINE_NAME "default";\n'
        ": Run this command to configure your shell: \n"
        ": eval `dockyard env --shell=tcsh default`\n"
    ),
    "emacs": (
        '(setenv "DOCKER_TLS_VERIFY" "1")\n'
        '(setenv "DOCKER_HOST" "tcp://192.168.99.100:2376")\n'
        '(setenv "DOCKER_CERT_PATH" "/home/u/.docker/machine/machines/default")\n'
        '(setenv "DOCKER_MACHINE_NAME" "default")\n'
        ";; Run this command to configure your shell: \n"
        ';; (with-temp-buffer (shell-command "dockyard env --shell=emacs default" (current-buffer)) (eval-buffer))\n'
    ),
}

UNSET = {
    "bash": (
        "unset DOCKER_TLS_VERIFY\nunset DOCKER_HOST\nunset DOCKER_CERT_PATH\nunset DOCKER_MACHINE_NAME\n"
        "# Run this command to configure your shell: \n"
        "# eval $(dockyard env -u)\n"
    ),
    "fish": (
        "set -e DOCKER_TLS_VERIFY;\nset -e DOCKER_HOST;\nset -e DOCKER_CERT_PATH;\nset -e DOCKER_MACHINE_NAME;\n"
        "# Run this command to configure your shell: \n"
        "# eval (dockyard env --shell=fish -u)\n"
    ),
    "powershell": (
        "Remove-Item Env:\\\\DOCKER_TLS_VERIFY\nRemove-Item Env:\\\\DOCKER_HOST\n"
        "Remove-Item Env:\\\\DOCKER_CERT_PATH\nRemove-Item Env:\\\\DOCKER_MACHINE_NAME\n"
        "# Run this command to configure your shell: \n"
        "# & dockyard env --shell=powershell -u | Invoke-Expression\n"
    ),
    "cmd": (
        "SET DOCKER_TLS_VERIFY=\nSET DOCKER_HOST=\nSET DOCKER_CERT_PATH=\nSET DOCKER_MACHINE_NAME=\n"
        "REM Run this command to configure your shell: \n"
        "REM \t@FOR /f \"tokens=*\" %i IN ('dockyard env --shell=cmd -u') DO @%i\n"
    ),
    "tcsh": (
        "unsetenv DOCKER_TLS_VERIFY;\nunsetenv DOCKER_HOST;\nunsetenv DOCKER_CERT_PATH;\nunsetenv DOCKER_MACHINE_NAME;\n"
        ": Run this command to configure your shell: \n"
        ": eval `dockyard env --shell=tcsh -u`\n"
    ),
    "emacs": (
        '(setenv "DOCKER_TLS_VERIFY" nil)\n(setenv "DOCKER_HOST" nil)\n'
        '(setenv "DOCKER_CERT_PATH" nil)\n(setenv "DOCKER_MACHINE_NAME" nil)\n'
        ";; Run this command to configure your shell: \n"
        ';; (with-temp-buffer (shell-command "dockyard env --shell=emacs -u" (current-buffer)) (eval-buffer))\n'
    ),
}


def hint(shell, *rest):
    shell_flag = [] if shell == "bash" else [f"--shell={shell}"]
    return argv_hint(["dockyard", "env", *shell_flag, *rest])


@pytest.mark.parametrize("shell", sorted(SET))
def test_set_output_per_shell(shell):
    assert format_env(shell, VARS, hint(shell, "default")) == SET[shell]


@pytest.mark.parametrize("shell", sorted(UNSET))
def test_unset_output_per_shell(shell):
    assert format_unset(shell, NAMES, hint(shell, "-u")) == UNSET[shell]


def test_cmd_hint_starts_with_a_real_tab():
    assert "REM \t@FOR" in format_env("cmd", VARS, "dockyard env --shell=cmd default")


@pytest.mark.parametrize("shell", ["zsh", "sh", "ksh", "csh", "", "nonsense"])
def test_other_shells_use_bash_syntax(shell):
    assert format_env(shell, VARS, "dockyard env default") == SET["bash"]
    assert shell_syntax(shell) == "bash"


def test_shell_names_ignore_case_and_pwsh_is_powershell():
    assert shell_syntax("Fish") == "fish"
    assert format_env("pwsh", VARS, "dockyard env --shell=powershell default") == SET["powershell"]


def test_no_proxy_line_and_no_hint():
    out = format_env("bash", [("NO_PROXY", "localhost,10.0.0.5")], None)
    assert out == 'export NO_PROXY="localhost,10.0.0.5"\n'
    assert format_unset("fish", ["no_proxy"], None) == "set -e no_proxy;\n"


def test_values_that_would_break_quoting_are_escaped():
    odd = [("DOCKER_CERT_PATH", '/h/a "b" $c `d` \\e')]
    assert format_env("bash", odd, None) == 'export DOCKER_CERT_PATH="/h/a \\"b\\" \\$c \\`d\\` \\\\e"\n'
    assert format_env("fish", odd, None) == 'set -gx DOCKER_CERT_PATH "/h/a \\"b\\" \\$c `d` \\\\e";\n'
    assert format_env("powershell", odd, None) == '$Env:DOCKER_CERT_PATH = "/h/a `"b`" `$c ``d`` \\e"\n'
    assert format_env("emacs", odd, None) == '(setenv "DOCKER_CERT_PATH" "/h/a \\"b\\" $c `d` \\\\e")\n'


def test_detect_shell_from_environment():
    assert detect_shell({"SHELL": "/usr/bin/fish"}) == ("fish", False)
    assert detect_shell({"SHELL": "/bin/zsh/"}) == ("zsh", False)
    assert detect_shell({"SHELL": "tcsh"}) == ("tcsh", False)
    assert detect_shell({"SHELL": ""}) == ("bash", True)
    assert detect_shell({}) == ("bash", True)
    assert "--shell flag" in GUESSED_SHELL_NOTE


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, ("NO_PROXY", "10.0.0.1")),
        ({"NO_PROXY": "localhost"}, ("NO_PROXY", "localhost,10.0.0.1")),
        ({"no_proxy": "localhost", "NO_PROXY": "other"}, ("no_proxy", "localhost,10.0.0.1")),
        ({"no_proxy": "", "NO_PROXY": "other"}, ("NO_PROXY", "other,10.0.0.1")),
        ({"NO_PROXY": "a,10.0.0.1"}, ("NO_PROXY", "a,10.0.0.1")),
        ({"NO_PROXY": "10.0.0.10"}, ("NO_PROXY", "10.0.0.10")),  # Docker Machine's substring test
    ],
)
def test_no_proxy_value(environ, expected):
    assert no_proxy_value(environ, "10.0.0.1") == expected


def test_argv_hint_quotes_only_argv0_with_space_or_backslash():
    assert argv_hint(["dockyard", "env", "default"]) == "dockyard env default"
    assert argv_hint(["/opt/my tools/dockyard", "env", "a b"]) == '"/opt/my tools/dockyard" env a b'
    assert argv_hint(["C:\\bin\\dockyard.exe", "env"]) == '"C:\\bin\\dockyard.exe" env'
    assert argv_hint([]) == ""


def test_format_config_quotes_paths_like_go():
    out = format_config(
        "/s/machines/m/ca.pem", "/s/machines/m/cert.pem", "/s/machines/m/key.pem", "tcp://10.0.0.5:2376"
    )
    assert out == (
        "--tlsverify\n"
        '--tlscacert="/s/machines/m/ca.pem"\n'
        '--tlscert="/s/machines/m/cert.pem"\n'
        '--tlskey="/s/machines/m/key.pem"\n'
        "-H=tcp://10.0.0.5:2376\n"
    )
    assert '--tlscacert="/my \\"dir\\"\\\\x\\t/ca.pem"' in format_config('/my "dir"\\x\t/ca.pem', "c", "k", "u")
