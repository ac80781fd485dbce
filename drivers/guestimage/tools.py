"""Finding the host programs the local hypervisor drivers need, with the Debian package that installs each."""

import os
import shutil

from dockyard.provisioner.core.errors import PreCreateCheckError

# program -> Debian/Ubuntu package that provides it
PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "VBoxManage": "virtualbox",
}


def find(program):
    """Absolute path of program (on PATH, or in /usr/sbin and /sbin, which a user's PATH may lack), or None."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) else None
    found = shutil.which(program)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = os.path.join(d, program)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require(program, why):
    """The program's path, or a pre-create error that says which package installs it."""
    path = find(program)
    if path:
        return path
    package = PACKAGES.get(os.path.basename(program))
    hint = f' (on Debian/Ubuntu: "apt-get install {package}")' if package else ""
    raise PreCreateCheckError(f"{program} is needed {why} but was not found{hint}")
