"""ISIC 2018 Task 1 lesion boundary segmentation -> nnU-Net 2D natural-image dataset.

Input: the official archives or folders `ISIC2018_Task1-2_Training_Input` (2594 RGB `ISIC_XXXXXXX.jpg`) and
`ISIC2018_Task1_Training_GroundTruth` (`ISIC_XXXXXXX_segmentation.png`, 0/255). The official validation and test
sets are not used: the paper "follows [1]" (Azad et al., BCDU-Net), which splits the 2594 training images into
1815 train / 259 validation / 520 test in file order. BCDU-Net took the order of `glob` (file-system order, not
reproducible); this converter uses the sorted image ids, so the three subsets are fixed and documented. With a
number of images other than 2594 the same 70 / 10 / 20 proportions are used (and said so).

Splits: `paper` = the 1815 + 259 in imagesTr with a one-fold splits_final.json; `cv5` = the same 2074, no split
file. Both put the 520 test images in imagesTs/labelsTs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .isic2017 import lesion_images, lesion_masks, lesion_plan, paired
from .layout import find_named_folder, one_folder
from .validation import Problems
from .writer import ConversionResult, run_split_conversion

IMAGES, MASKS = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"
BCDU_SPLIT = (1815, 259, 520)  # of the 2594 training images
DEFAULT_IDS = {"paper": (723, "ISIC2018"), "cv5": (724, "ISIC2018CV")}


def bcdu_split(case_ids: Sequence[str]) -> Tuple[List[str], List[str], List[str], Optional[str]]:
    """(train, val, test, note) from the sorted ids: BCDU-Net's 1815/259/520 for 2594 images, else 70/10/20."""
    ids = sorted(case_ids)
    if len(ids) == sum(BCDU_SPLIT):
        n_train, n_val, _ = BCDU_SPLIT
        note = None
    else:
        n_train, n_val = round(0.7 * len(ids)), round(0.1 * len(ids))
        note = (f"{len(ids)} training images instead of the official 2594: split 70/10/20 in sorted order "
                f"({n_train}/{n_val}/{len(ids) - n_train - n_val}); this is not the paper's split")
    return ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:], note


def convert_isic2018(sources: Sequence[str], out: Optional[str] = None, split: str = "paper",
                     dataset_id: Optional[int] = None, name: Optional[str] = None, overwrite: bool = False,
                     num_processes: int = 1) -> ConversionResult:
    """Convert the ISIC 2018 Task 1 training download into nnUNet_raw (see the module docstring)."""
    return run_split_conversion("isic2018", sources, out, split, dataset_id, name, DEFAULT_IDS, _prepare, overwrite,
                                num_processes)


def _prepare(roots: List[str], split: str):
    hint = f"Expected the official ISIC 2018 Task 1 training archives (or folders) {IMAGES} and {MASKS}."
    data = one_folder(find_named_folder(roots, IMAGES), f"{IMAGES} folder", hint)
    gt = one_folder(find_named_folder(roots, MASKS), f"{MASKS} folder", hint)
    problems = Problems()
    pairs = {case: (case, image, mask) for case, image, mask in paired(lesion_images(data, problems),
                                                                       lesion_masks(gt), problems)}
    if len(pairs) < 10:
        problems.add(data, f"only {len(pairs)} image/mask pairs; too few for a train/validation/test split")
    problems.raise_if_any("ISIC 2018")
    train, val, test, note = bcdu_split(list(pairs))
    subsets: Dict[str, list] = {"train": [pairs[c] for c in train], "val": [pairs[c] for c in val],
                                "test": [pairs[c] for c in test]}
    return lesion_plan(subsets, split, "ISIC2018", "ISIC 2018 Task 1 lesion segmentation (dermoscopy, RGB), "
                                                   "BCDU-Net's 1815/259/520 split of the training images",
                       "isic2018", [note] if note else [])
