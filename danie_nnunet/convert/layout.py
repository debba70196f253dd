"""Finding a dataset's official folder layout inside what the user downloaded (folders or extracted archives)."""
from __future__ import annotations

import os
from typing import Callable, List, Sequence

MAX_DEPTH = 5


def find_folders(roots: Sequence[str], matches: Callable[[str], bool], max_depth: int = MAX_DEPTH) -> List[str]:
    """Folders under `roots` (the roots included, down to `max_depth` levels) for which `matches(folder)`;
    hidden folders and macOS `__MACOSX` debris are skipped."""
    found: List[str] = []
    for root in roots:
        base_depth = root.rstrip(os.sep).count(os.sep)
        for folder, dirs, _ in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            if folder.count(os.sep) - base_depth >= max_depth:
                dirs[:] = []
            if matches(folder) and folder not in found:
                found.append(folder)
    return found


def has_subfolders(*names: str) -> Callable[[str], bool]:
    return lambda folder: all(os.path.isdir(os.path.join(folder, n)) for n in names)


def find_named_folder(roots: Sequence[str], name: str) -> List[str]:
    """Folders called `name` (case-insensitive) under `roots`."""
    return find_folders(roots, lambda f: os.path.basename(f.rstrip(os.sep)).lower() == name.lower())


def one_folder(candidates: List[str], what: str, hint: str) -> str:
    """The single candidate; a clear error when there is none or more than one."""
    if not candidates:
        raise ValueError(f"no {what} found in the input. {hint}")
    if len(candidates) > 1:
        raise ValueError(f"more than one {what} found in the input: {', '.join(candidates)}. "
                         f"Pass only the one you mean.")
    return candidates[0]


def files_with_suffix(folder: str, suffix: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(suffix) and not f.startswith("."))
