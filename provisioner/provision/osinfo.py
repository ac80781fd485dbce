"""Detect the host's OS family from /etc/os-release and know how to install packages on it."""

import dataclasses
import shlex

from dockyard.provisioner.core.errors import ProvisionError, UnsupportedOS

# family -> (IDs that belong to it, command that installs packages non-interactively)
FAMILIES = {
    "debian": (
        ("debian", "ubuntu", "raspbian", "linuxmint", "pop", "devuan"),
        "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends {pkgs}"
        " || { DEBIAN_FRONTEND=noninteractive apt-get update -q && "
        "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends"
        " {pkgs}; }",
    ),
    "redhat": (
        ("fedora", "rhel", "centos", "rocky", "almalinux", "ol", "amzn"),
        "if command -v dnf >/dev/null; then dnf -y install {pkgs}; else yum -y install {pkgs}; fi",
    ),
    "alpine": (("alpine",), "apk add --no-cache {pkgs}"),
}
SUPPORTED = "Debian, Ubuntu, Fedora, RHEL/CentOS/Rocky/AlmaLinux, Amazon Linux, Alpine"


@dataclasses.dataclass
class OSInfo:
    id: str
    id_like: tuple
    version_id: str
    pretty_name: str
    family: str

    def install_command(self, packages):
        # replace(), not format(): the shell commands contain braces of their own
        return FAMILIES[self.family][1].replace("{pkgs}", " ".join(shlex.quote(p) for p in packages))


def parse_os_release(text):
    """KEY=VALUE lines with optional quotes; comments and malformed lines are skipped."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            continue
        values[key.strip()] = parts[0] if parts else ""
    return values


def classify(values):
    os_id = values.get("ID", "").lower()
    like = tuple(values.get("ID_LIKE", "").lower().split())
    for family, (ids, _) in FAMILIES.items():
        if os_id in ids or any(x in ids for x in like):
            return OSInfo(os_id, like, values.get("VERSION_ID", ""), values.get("PRETTY_NAME", os_id), family)
    name = values.get("PRETTY_NAME") or os_id or "unknown"
    raise UnsupportedOS(f'unsupported OS "{name}" (ID={os_id or "?"}); supported: {SUPPORTED}')


def detect(session):
    result = session.run("cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release", check=False)
    if result.exit_status != 0 or not result.stdout.strip():
        raise ProvisionError("cannot read /etc/os-release on the host: unable to detect its OS")
    return classify(parse_os_release(result.stdout))


PYTHON_CHECK = (
    "for p in python3 /usr/bin/python3 /usr/local/bin/python3; do "
    "command -v $p >/dev/null 2>&1 && exec $p -c "
    "'import sys; print(sys.executable); print(\"%d.%d\" % sys.version_info[:2])'; done; exit 127"
)


def parse_python(text):
    """(path, (major, minor)) from PYTHON_CHECK's output, or None when there is no python3."""
    lines = text.split()
    if len(lines) < 2 or "." not in lines[1]:
        return None
    try:
        major, minor = (int(x) for x in lines[1].split(".")[:2])
    except ValueError:
        return None
    return lines[0], (major, minor)


def check_python_version(found):
    path, version = found
    if version < (3, 9):
        raise ProvisionError(f"the host's python3 ({path}) is {version[0]}.{version[1]}; the engine needs 3.9 or newer")


def find_python(session):
    """(path, (major, minor)) of the host's python3, or None."""
    r = session.run(PYTHON_CHECK, check=False)
    return parse_python(r.stdout) if r.exit_status == 0 else None


def ensure_python(session, osinfo, log):
    found = find_python(session)
    if found is None:
        log("Installing python3 on the host...")
        session.run(osinfo.install_command(["python3"]), sudo=True, timeout=900)
        found = find_python(session)
        if found is None:
            raise ProvisionError("python3 is still missing on the host after installing it")
    check_python_version(found)
    return found[0]
