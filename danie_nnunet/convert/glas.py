"""GlaS gland segmentation (MICCAI 2015, Warwick-QU) -> nnU-Net 2D natural-image dataset.

Input: the official download (`warwick_qu_dataset_released_2016_07_08.zip` or its folder "Warwick QU Dataset
(Released 2016_07_08)"): H&E images `train_N.bmp`, `testA_N.bmp`, `testB_N.bmp` and instance annotations
`*_anno.bmp` (0 = background, one value per gland), binarised to gland = 1.

Split (the paper's 85 train / 80 test): the 85 training images in imagesTr and the 80 test images (testA 60 +
testB 20) in imagesTs/labelsTs. No split file: the paper has no validation set, so its protocol is
`nnUNetv2_train ID 2d all` (train on all 85); nnU-Net's 5-fold CV on the 85 (folds 0-4) is the alternative.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence

from .layout import find_folders, one_folder
from .natural_images import RGB_CHANNELS, check_pair_sizes, write_case
from .validation import Problems, missing_partners
from .writer import CaseJob, ConversionPlan, ConversionResult, dataset_json, run_conversion

GLAND_LABELS = {"background": 0, "gland": 1}
OFFICIAL_COUNTS = {"train": 85, "testA": 60, "testB": 20}
DEFAULT_ID = (731, "GlaS")
_FILE = re.compile(r"(train|testA|testB)_(\d+)(_anno)?\.bmp", flags=re.IGNORECASE)


def convert_glas(sources: Sequence[str], out: Optional[str] = None, dataset_id: Optional[int] = None,
                 name: Optional[str] = None, overwrite: bool = False, num_processes: int = 1) -> ConversionResult:
    """Convert the GlaS download into nnUNet_raw (see the module docstring)."""
    return run_conversion("glas", sources, out, dataset_id or DEFAULT_ID[0], name or DEFAULT_ID[1], {}, _prepare,
                          overwrite, num_processes)


def _prepare(roots: List[str]) -> ConversionPlan:
    folder = one_folder(
        find_folders(roots, lambda f: any(_FILE.fullmatch(x) and "_anno" in x.lower() for x in os.listdir(f))),
        "GlaS folder (train_N.bmp, train_N_anno.bmp, testA_N.bmp, ...)",
        "Expected the GlaS download warwick_qu_dataset_released_2016_07_08.zip or its folder "
        "'Warwick QU Dataset (Released 2016_07_08)'.")
    problems, notes = Problems(), []
    images, annos = {}, {}
    for f in sorted(os.listdir(folder)):
        m = _FILE.fullmatch(f)
        if m:
            case = f"{m.group(1)}_{int(m.group(2))}"
            (annos if m.group(3) else images)[case] = os.path.join(folder, f)
    jobs = []
    for case in missing_partners(images, annos, "image", "annotation (_anno.bmp)", problems):
        check_pair_sizes(images[case], annos[case], problems)
        role = "train" if case.startswith("train") else "test"
        jobs.append(CaseJob(case, role, write_case, (role, case, images[case], annos[case], "instances")))
    for subset, expected in OFFICIAL_COUNTS.items():
        n = sum(1 for j in jobs if j.case_id.split("_")[0] == subset)
        if n != expected:
            notes.append(f"{subset}: {n} images; the official GlaS {subset} set has {expected}")
    if not any(j.role == "train" for j in jobs):
        problems.add(folder, "no training images (train_N.bmp with train_N_anno.bmp)")
    problems.raise_if_any("GlaS")
    num_train = sum(1 for j in jobs if j.role == "train")
    return ConversionPlan(jobs, dataset_json(RGB_CHANNELS, GLAND_LABELS, num_train, ".png", "GlaS",
                                             "GlaS gland segmentation (H&E), instance annotations binarised",
                                             "glas"), None, notes)
