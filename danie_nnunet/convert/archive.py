"""Safe extraction of the datasets' download archives (zip, tar): every member is checked before anything is written.

Refused: absolute paths (`/etc/x`, `C:\\x`), any `..` component (zip-slip), links and device files. A refused
archive leaves the destination untouched.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
from typing import Iterable, List, Tuple

from tqdm import tqdm

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination, or is a link/device."""


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def safe_member_path(name: str) -> str:
    """The member's path relative to the destination (POSIX separators); raises UnsafeArchiveError."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"member with an empty or invalid name {name!r}")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r} climbs out of the destination with '..'")
    return "/".join(parts)


def _zip_members(archive: zipfile.ZipFile) -> List[Tuple[str, zipfile.ZipInfo]]:
    members = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"member {info.filename!r} is a symbolic link")
        members.append((safe_member_path(info.filename), info))
    return members


def _tar_members(archive: tarfile.TarFile) -> List[Tuple[str, tarfile.TarInfo]]:
    members = []
    for info in archive.getmembers():
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"member {info.name!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"member {info.name!r} is a device, fifo or other special file")
        members.append((safe_member_path(info.name), info))
    return members


def _inside(dest: str, path: str) -> bool:
    dest, path = os.path.realpath(dest), os.path.realpath(path)
    return path == dest or path.startswith(dest + os.sep)


def extract_archive(archive_path: str, dest: str) -> str:
    """Extract `archive_path` into `dest` (created) after checking every member; returns `dest`.

    Raises UnsafeArchiveError naming the first offending member; nothing is written in that case.
    """
    os.makedirs(dest, exist_ok=True)
    lower = archive_path.lower()
    if lower.endswith(".zip"):
        with zipfile.ZipFile(archive_path) as archive:
            members = _zip_members(archive)
            _write_members(dest, members, lambda info: archive.open(info), lambda info: info.is_dir(),
                           lambda info: info.file_size, os.path.basename(archive_path))
    else:
        with tarfile.open(archive_path) as archive:
            members = _tar_members(archive)
            _write_members(dest, members, lambda info: archive.extractfile(info), lambda info: info.isdir(),
                           lambda info: info.size, os.path.basename(archive_path))
    return dest


def _write_members(dest, members, open_member, is_dir, size, label) -> None:
    for rel, _ in members:  # defence in depth: the checked names must also resolve inside dest
        if rel and not _inside(dest, os.path.join(dest, rel)):
            raise UnsafeArchiveError(f"member {rel!r} resolves outside the destination")
    total = sum(size(info) for _, info in members)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"extracting {label}", leave=False) as bar:
        for rel, info in members:
            if not rel:
                continue
            target = os.path.join(dest, rel)
            if is_dir(info):
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open_member(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            bar.update(size(info))


def open_sources(sources: Iterable[str], workdir: str) -> List[str]:
    """Folders to search for a dataset: each source folder, plus every archive given or lying directly in one,
    extracted (safely) under `workdir`."""
    roots: List[str] = []
    n = 0
    for source in sources:
        source = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(source):
            roots.append(source)
            archives = sorted(os.path.join(source, f) for f in os.listdir(source)
                              if is_archive(os.path.join(source, f)))
        elif is_archive(source):
            archives = [source]
        elif os.path.exists(source):
            raise ValueError(f"{source} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        else:
            raise ValueError(f"{source} does not exist")
        for archive in archives:
            n += 1
            roots.append(extract_archive(archive, os.path.join(workdir, f"archive{n:02d}")))
    return roots
