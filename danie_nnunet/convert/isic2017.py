"""ISIC 2017 skin-lesion segmentation (Part 1) -> nnU-Net 2D natural-image dataset.

Input: the official archives or folders `ISIC-2017_Training_Data`, `ISIC-2017_Training_Part1_GroundTruth`,
`ISIC-2017_Validation_Data`, `ISIC-2017_Validation_Part1_GroundTruth`, `ISIC-2017_Test_v2_Data`,
`ISIC-2017_Test_v2_Part1_GroundTruth` (RGB `ISIC_XXXXXXX.jpg`, masks `ISIC_XXXXXXX_segmentation.png` with values
0/255; the `_superpixels.png` files and metadata CSVs are ignored).

Splits (the paper: the official 2000 train / 150 validation / 600 test): `paper` = train + validation in imagesTr
with a one-fold splits_final.json (train 2000, val 150); `cv5` = the same 2150 images, no split file (nnU-Net's
5-fold CV). Both put the 600 test images in imagesTs/labelsTs.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from .layout import files_with_suffix, find_named_folder, one_folder
from .natural_images import RGB_CHANNELS, check_pair_sizes, write_case
from .splits import one_fold
from .validation import Problems, missing_partners
from .writer import CaseJob, ConversionPlan, ConversionResult, dataset_json, run_split_conversion

FOLDERS = {"train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
           "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
           "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth")}
OFFICIAL_COUNTS = {"train": 2000, "val": 150, "test": 600}
LESION_LABELS = {"background": 0, "lesion": 1}
DEFAULT_IDS = {"paper": (721, "ISIC2017"), "cv5": (722, "ISIC2017CV")}


def lesion_images(folder: str, problems: Problems) -> Dict[str, str]:
    """ISIC_XXXXXXX.jpg (or .png) images of a data folder, by id; superpixel maps and CSVs are skipped."""
    found = {}
    for f in sorted(os.listdir(folder)):
        m = re.fullmatch(r"(ISIC_\d+)\.(jpe?g|png)", f, flags=re.IGNORECASE)
        if m:
            if m.group(1) in found:
                problems.add(f, f"a second image for {m.group(1)}")
            found[m.group(1)] = os.path.join(folder, f)
    return found


def lesion_masks(folder: str) -> Dict[str, str]:
    suffix = "_segmentation.png"
    return {f[: -len(suffix)]: os.path.join(folder, f) for f in files_with_suffix(folder, suffix)
            if re.fullmatch(r"ISIC_\d+_segmentation\.png", f)}


def paired(images: Dict[str, str], masks: Dict[str, str], problems: Problems) -> List[Tuple[str, str, str]]:
    """(id, image, mask) for ids having both; a problem for each unpaired file; header sizes checked."""
    pairs = []
    for case in missing_partners(images, masks, "image", "mask (_segmentation.png)", problems):
        check_pair_sizes(images[case], masks[case], problems)
        pairs.append((case, images[case], masks[case]))
    return pairs


def lesion_plan(subsets: Dict[str, List[Tuple[str, str, str]]], split: str, name: str, description: str,
                benchmark: str, notes: List[str]) -> ConversionPlan:
    """imagesTr = train + val (one-fold split for `paper`, none for `cv5`), imagesTs/labelsTs = test."""
    jobs = [CaseJob(case, "train", write_case, ("train", case, image, mask, "binary"))
            for subset in ("train", "val") for case, image, mask in subsets[subset]]
    jobs += [CaseJob(case, "test", write_case, ("test", case, image, mask, "binary"))
             for case, image, mask in subsets["test"]]
    splits = (one_fold([c for c, _, _ in subsets["train"]], [c for c, _, _ in subsets["val"]])
              if split == "paper" else None)
    num_train = len(subsets["train"]) + len(subsets["val"])
    return ConversionPlan(jobs, dataset_json(RGB_CHANNELS, LESION_LABELS, num_train, ".png", name, description,
                                             benchmark), splits, notes)


def convert_isic2017(sources: Sequence[str], out: Optional[str] = None, split: str = "paper",
                     dataset_id: Optional[int] = None, name: Optional[str] = None, overwrite: bool = False,
                     num_processes: int = 1) -> ConversionResult:
    """Convert the ISIC 2017 Part 1 download into nnUNet_raw (see the module docstring)."""
    return run_split_conversion("isic2017", sources, out, split, dataset_id, name, DEFAULT_IDS, _prepare, overwrite,
                                num_processes)


def _prepare(roots: List[str], split: str) -> ConversionPlan:
    problems, notes = Problems(), []
    hint = "Expected the six official ISIC 2017 Part 1 archives (or their folders): " + ", ".join(
        n for pair in FOLDERS.values() for n in pair) + "."
    subsets = {}
    for subset, (data_name, gt_name) in FOLDERS.items():
        data = one_folder(find_named_folder(roots, data_name), f"{data_name} folder", hint)
        gt = one_folder(find_named_folder(roots, gt_name), f"{gt_name} folder", hint)
        subsets[subset] = paired(lesion_images(data, problems), lesion_masks(gt), problems)
        if len(subsets[subset]) != OFFICIAL_COUNTS[subset]:
            notes.append(f"{subset}: {len(subsets[subset])} images; the official ISIC 2017 {subset} set has "
                         f"{OFFICIAL_COUNTS[subset]}")
    counts = Counter(c for s in subsets.values() for c, _, _ in s)
    for case in sorted(c for c, n in counts.items() if n > 1):
        problems.add(case, "appears in more than one of train/validation/test")
    problems.raise_if_any("ISIC 2017")
    return lesion_plan(subsets, split, "ISIC2017", "ISIC 2017 Part 1 lesion segmentation (dermoscopy, RGB)",
                       "isic2017", notes)
