"""A stand-in for Debian's genericcloud image, made from the cached test guest image (mmdebstrap, built by
.ci/vm-deps.sh): a partitioned disk that boots through its own loader from the firmware, as Debian's does
(syslinux on a small FAT partition, the test image's ext4 root on the second), published under Debian's file
name next to a SHA512SUMS. Built once per test image and cached beside it."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess

from dockyard.drivers.guestimage import build, debian

TOOLS = ("syslinux", "mcopy", "mkfs.vfat", "qemu-img")
MBR = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin")
MiB = 1 << 20
BOOT_MB = 32


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if not shutil.which(t)]
    if not any(os.path.exists(p) for p in MBR):
        missing.append("syslinux-common (mbr.bin)")
    return missing


def _partition(boot: bool, ptype: int, start: int, sectors: int) -> bytes:
    # CHS fields are ignored by every loader that matters here (LBA); fill them with the "use LBA" maximum.
    return struct.pack("<B3sB3sII", 0x80 if boot else 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", start, sectors)


def build_like_debian(image: build.GuestImage, out_dir: str) -> str:
    """out_dir/<Debian's file name> (qcow2) and out_dir/SHA512SUMS; returns the image path."""
    name = debian.image_filename("amd64")
    final = os.path.join(out_dir, name)
    if os.path.exists(final) and os.path.exists(os.path.join(out_dir, debian.SUMS)):
        return final
    os.makedirs(out_dir, exist_ok=True)
    work = os.path.join(out_dir, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "root.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", image.disk, root], check=True)
    fat = os.path.join(work, "boot.img")
    subprocess.run(["mkfs.vfat", "-n", "BOOT", "-C", fat, str(BOOT_MB * 1024)], check=True, capture_output=True)
    subprocess.run(["syslinux", "--install", fat], check=True)
    cfg = os.path.join(work, "syslinux.cfg")
    with open(cfg, "w") as f:
        f.write(
            f"DEFAULT linux\nPROMPT 0\nTIMEOUT 1\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd {image.cmdline}\n"
        )
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for src in (image.kernel, image.initrd, cfg):
        subprocess.run(["mcopy", "-i", fat, src, "::/"], check=True, env=env)
    root_sectors = os.path.getsize(root) // 512
    boot_start, boot_sectors = MiB // 512, BOOT_MB * MiB // 512
    root_start = boot_start + boot_sectors
    disk = os.path.join(work, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate((root_start + root_sectors) * 512)
        with open(next(p for p in MBR if os.path.exists(p)), "rb") as m:
            f.write(m.read()[:440])
        f.seek(446)
        f.write(_partition(True, 0x0C, boot_start, boot_sectors))
        f.write(_partition(False, 0x83, root_start, root_sectors))
        f.seek(510)
        f.write(b"\x55\xaa")
    for src, start in ((fat, boot_start), (root, root_start)):
        subprocess.run(
            [
                "dd",
                f"if={src}",
                f"of={disk}",
                "bs=1M",
                f"seek={start * 512 // MiB}",
                "conv=sparse,notrunc",
                "status=none",
            ],
            check=True,
        )
    tmp = final + ".tmp"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, tmp], check=True)
    h = hashlib.sha512()
    with open(tmp, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    with open(os.path.join(out_dir, debian.SUMS), "w") as f:
        f.write(f"{'0' * 128}  debian-12-genericcloud-arm64.qcow2\n{h.hexdigest()}  {name}\n")
    os.replace(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
    return final
