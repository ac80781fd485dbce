"""Small ISO 9660 images in Python (pycdlib): the cloud-init NoCloud seed and an isolinux boot CD."""

import io
import os
import re

import pycdlib

from dockyard.provisioner.core.errors import DriverError


def _iso_name(name, taken):
    """An ISO 9660 level-1 name (8.3, A-Z0-9_) for name; Rock Ridge and Joliet carry the real one."""
    stem, _, ext = name.rpartition(".") if "." in name else (name, "", "")
    clean = lambda s, n: re.sub(r"[^A-Z0-9_]", "_", s.upper())[:n]  # noqa: E731
    base, suffix = clean(stem, 8) or "FILE", clean(ext, 3)
    candidate, i = base, 0
    while f"{candidate}.{suffix}" in taken:
        i += 1
        candidate = base[: 8 - len(str(i))] + str(i)
    taken.add(f"{candidate}.{suffix}")
    return f"/{candidate}.{suffix};1"


def write_iso(path, files, label, boot=None):
    """Write an ISO with files {name: bytes} in its root (names kept through Rock Ridge and Joliet).
    boot: name of an isolinux.bin among files to make it El Torito bootable (no emulation, boot info table)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=label)
    taken, iso_paths = set(), {}
    for name, data in files.items():
        iso_paths[name] = _iso_name(name, taken)
        iso.add_fp(io.BytesIO(data), len(data), iso_paths[name], rr_name=name, joliet_path="/" + name)
    if boot:
        iso.add_eltorito(iso_paths[boot], bootcatfile="/BOOT.CAT;1", boot_load_size=4, boot_info_table=True)
    tmp = f"{path}.tmp"
    try:
        iso.write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise DriverError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        iso.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_iso(path):
    """(volume label, {Rock Ridge name: bytes}) of the files in an ISO's root."""
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot() or child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue()
        return label, files
    finally:
        iso.close()
