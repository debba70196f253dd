"""Checks of a raw download before anything is written: pairs, geometry, label values; problems reported per file."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import SimpleITK as sitk

from ..checks import check_image

MAX_PROBLEMS_SHOWN = 50


class ConversionError(ValueError):
    """The input cannot be converted; `problems` lists what is wrong, one line per file."""

    def __init__(self, summary: str, problems: Sequence[str] = ()):
        self.summary, self.problems = summary, list(problems)
        lines = [summary] + [f"  {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(self.problems) - MAX_PROBLEMS_SHOWN} more")
        super().__init__("\n".join(lines))


@dataclass
class Problems:
    """Collects problems per file so that one run reports all of them."""

    items: List[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_if_any(self, dataset: str) -> None:
        if self.items:
            raise ConversionError(f"{len(self.items)} problem(s) in the {dataset} input; nothing was written:",
                                  self.items)


@dataclass(frozen=True)
class VolumeHeader:
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]


def read_header(path: str) -> VolumeHeader:
    """Geometry of a medical image without reading its voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return VolumeHeader(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                        tuple(reader.GetDirection()))


def check_volume_pair(image: str, label: str, problems: Problems, warnings: List[str]) -> Optional[VolumeHeader]:
    """Image and label readable, same size and spacing (errors); same origin/direction (warning, as nnU-Net)."""
    try:
        hi = read_header(image)
    except RuntimeError as e:
        problems.add(os.path.basename(image), f"cannot be read ({_first_line(e)})")
        return None
    try:
        hl = read_header(label)
    except RuntimeError as e:
        problems.add(os.path.basename(label), f"cannot be read ({_first_line(e)})")
        return None
    name = f"{os.path.basename(image)} / {os.path.basename(label)}"
    ok = True
    if hi.size != hl.size:
        problems.add(name, f"shape mismatch between image {hi.size} and label {hl.size}")
        ok = False
    if not np.allclose(hi.spacing, hl.spacing, rtol=1e-4, atol=1e-5):
        problems.add(name, f"spacing mismatch between image {_fmt(hi.spacing)} and label {_fmt(hl.spacing)}")
        ok = False
    if ok and not (np.allclose(hi.origin, hl.origin, atol=1e-3) and np.allclose(hi.direction, hl.direction,
                                                                                  atol=1e-4)):
        warnings.append(f"{name}: origin/direction differ between image and label (the label's is used)")
    # SimpleITK reads a truncated NIfTI as zeros and NaN voxels as 0 without a word: read the voxels exactly
    for path in (image, label):
        for finding in check_image(path, channels=None, constant_warning=False):
            if finding.severity == "error":
                problems.add(os.path.basename(path), finding.message)
                ok = False
    return hi if ok else None


def read_label_array(path: str) -> np.ndarray:
    """Voxels of a label file as int array; raises ValueError for non-integer values."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(path))
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("contains non-integer values")
        array = array.astype(np.int64)
    return array


def check_label_values(path: str, allowed: Iterable[int], problems: Problems) -> Optional[Set[int]]:
    """The label values present in `path`; a problem when any is not in `allowed`."""
    try:
        values = set(int(v) for v in np.unique(read_label_array(path)))
    except (RuntimeError, ValueError) as e:
        problems.add(os.path.basename(path), f"label file {_first_line(e)}")
        return None
    unexpected = sorted(values - set(allowed))
    if unexpected:
        problems.add(os.path.basename(path), f"unexpected label values {unexpected} (allowed: "
                                             f"{_ranges(sorted(set(allowed)))})")
        return None
    return values


def missing_partners(first: Dict[str, str], second: Dict[str, str], first_kind: str, second_kind: str,
                     problems: Problems) -> List[str]:
    """Case ids present in both mappings; a problem for every id that has only one of the two files."""
    for case in sorted(set(first) - set(second)):
        problems.add(os.path.basename(first[case]), f"has no {second_kind} (expected one for case {case})")
    for case in sorted(set(second) - set(first)):
        problems.add(os.path.basename(second[case]), f"has no {first_kind} (expected one for case {case})")
    return sorted(set(first) & set(second))


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _ranges(values: List[int]) -> str:
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))
