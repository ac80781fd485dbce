"""Image references the way docker spells them: parsing, normalising to the familiar form, matching."""

import fnmatch
import re

from dockyard.engine.errors import InvalidParameter

DEFAULT_TAG = "latest"
DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")
HEX_PREFIX = re.compile(r"^[a-f0-9]{1,64}$")


class Reference:
    """repository (familiar form, e.g. 'busybox', 'foo/bar', 'localhost:5000/x'), tag, digest."""

    __slots__ = ("repo", "tag", "digest")

    def __init__(self, repo, tag=None, digest=None):
        self.repo = repo
        self.tag = tag
        self.digest = digest

    def __str__(self):
        out = self.repo
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def tagged(self):
        """'repo:tag' (the default tag if none was given and there is no digest)."""
        return "%s:%s" % (self.repo, self.tag or DEFAULT_TAG)

    def full_name(self):
        """'docker.io/library/busybox' for 'busybox' (registry form, for OCI annotations)."""
        first = self.repo.split("/", 1)[0]
        if "/" in self.repo and ("." in first or ":" in first or first == "localhost"):
            return self.repo
        if "/" not in self.repo:
            return "%s/%s%s" % (DEFAULT_DOMAIN, _OFFICIAL_PREFIX, self.repo)
        return "%s/%s" % (DEFAULT_DOMAIN, self.repo)


def familiar_repo(name):
    """Normalise a repository name to the short form docker shows ('docker.io/library/x' -> 'x')."""
    parts = name.split("/")
    if len(parts) > 1 and (
        "." in parts[0] or ":" in parts[0] or parts[0] == "localhost" or parts[0] != parts[0].lower()
    ):
        domain, path = parts[0], "/".join(parts[1:])
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN:
        if path.startswith(_OFFICIAL_PREFIX) and path.count("/") == 1:
            path = path[len(_OFFICIAL_PREFIX) :]
        return domain, path, path
    return domain, path, "%s/%s" % (domain, path)


def parse(text, default_tag=False):
    """Parse 'name[:tag][@digest]'; InvalidParameter('invalid reference format') when malformed.

    With default_tag, a reference with neither tag nor digest gets 'latest'.
    """
    if not text or text != text.strip():
        raise InvalidParameter("invalid reference format")
    name, digest = text, None
    if "@" in text:
        name, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidParameter("invalid reference format")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidParameter("invalid reference format")
    if not name:
        raise InvalidParameter("invalid reference format")
    domain, path, familiar = familiar_repo(name)
    if domain != DEFAULT_DOMAIN and not _DOMAIN.match(domain):
        raise InvalidParameter("invalid reference format")
    for comp in path.split("/"):
        if not _COMPONENT.match(comp):
            if comp.lower() == comp:
                raise InvalidParameter("invalid reference format")
            raise InvalidParameter("invalid reference format: repository name (%s) must be lowercase" % path)
    if len(familiar) > 255:
        raise InvalidParameter("invalid reference format: repository name must not be more than 255 characters")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(familiar, tag, digest)


def check_repo_name(repo):
    """moby refuses 64-hex repository names: they would shadow image IDs."""
    if _HEX64.match(repo.rsplit("/", 1)[-1]) and "/" not in repo:
        raise InvalidParameter("invalid repository name (%s), cannot specify 64-byte hexadecimal strings" % repo)


def matches(pattern, tagged_ref):
    """`docker images --filter reference=PATTERN` on one 'repo:tag' (moby's FamiliarMatch)."""
    repo = tagged_ref.rsplit(":", 1)[0] if ":" in tagged_ref.rsplit("/", 1)[-1] else tagged_ref
    for candidate in (tagged_ref, repo):
        if _path_match(pattern, candidate):
            return True
    return False


def _path_match(pattern, name):
    """Go's path.Match: '*' does not cross '/'."""
    pat_parts, name_parts = pattern.split("/"), name.split("/")
    if len(pat_parts) != len(name_parts):
        return False
    return all(fnmatch.fnmatchcase(n, p) for p, n in zip(pat_parts, name_parts))
