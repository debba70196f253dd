"""Checkpoint files that are either the old complete file or the new complete file, never a truncated one.

nnU-Net's save_checkpoint calls torch.save on the final name, so a kill (OOM killer, scheduler pre-emption,
`kill -9`) during the write leaves a truncated checkpoint_latest.pth that `nnUNetv2_train ... --c` cannot load,
and a week of training is lost. Here the checkpoint goes to a temporary file in the same folder, is flushed to
disk (fsync), renamed over the final name (atomic on POSIX file systems) and the folder entry is fsynced.
"""
from __future__ import annotations

import glob
import os
from typing import Callable

PARTIAL_SUFFIX = ".partial-"


def partial_path(path: str) -> str:
    """The temporary name `path` is written under: hidden, in the same folder (a rename within one file system)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{PARTIAL_SUFFIX}{os.getpid()}")


def _fsync_folder(folder: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: renames are durable without it
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(write: Callable[[str], None], path: str) -> None:
    """Call write(tmp) to write the file, then fsync it and rename it to `path`.

    If write() writes nothing (nnU-Net skips checkpoints on DDP ranks > 0 and with --disable_checkpointing),
    nothing happens. If write() raises, the temporary file is removed and `path` is untouched.
    """
    tmp = partial_path(path)
    try:
        write(tmp)
        if not os.path.exists(tmp):
            return
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_partial_writes(folder: str) -> list:
    """Delete temporary files a killed run left behind in `folder`; returns their paths."""
    stale = sorted(glob.glob(os.path.join(glob.escape(folder), f".*{PARTIAL_SUFFIX}*")))
    for path in stale:
        os.remove(path)
    return stale
