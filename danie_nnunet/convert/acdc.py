"""ACDC cardiac cine-MRI (MICCAI 2017) -> nnU-Net raw dataset, without nnU-Net 2.8.1's own converter (it crashes:
`nnUNet_raw.replace` on the lazy path object).

Input: the official download (`ACDC.zip`, `database/training/patientXXX/` or `training/patientXXX/`), each patient
with `patientXXX_frameYY.nii.gz` + `patientXXX_frameYY_gt.nii.gz` for the ED and ES frames named in `Info.cfg`
(the 4D cine `_4d.nii.gz` is ignored). Labels: RV = 1, Myo = 2, LV = 3. Cases are the frames, named as in nnU-Net's
Dataset027 (`patient001_frame01`). Only the 100 training patients are used, as in the paper's lineage.

Splits: `paper` = the TransUNet/MT-UNet lineage's 70 / 10 / 20 patients (the 80 train + validation patients in
imagesTr with a one-fold splits_final.json, the 20 test patients in imagesTs/labelsTs); `cv5` = all 100 patients
in imagesTr with a 5-fold splits_final.json grouped by patient, so the two frames of a patient never cross folds
(nnU-Net's own CV would split frames independently).
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .layout import files_with_suffix, find_folders, one_folder
from .splits import grouped_kfold, one_fold
from .validation import Problems, check_volume_pair, read_label_array
from .writer import (CaseJob, ConversionPlan, ConversionResult, case_paths, dataset_json, run_split_conversion,
                     write_label_volume)

ACDC_LABELS = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
# The lineage's lists (MT-UNet's ACDC data as used by CASCADE, MERIT, EMCAD, ...): lists_ACDC/valid.txt, test.txt
PAPER_VAL_PATIENTS = (19, 21, 29, 33, 41, 50, 61, 71, 76, 80)
PAPER_TEST_PATIENTS = (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
NUM_PATIENTS = 100
DEFAULT_IDS = {"paper": (711, "ACDC"), "cv5": (712, "ACDCCV")}


def patient_name(number: int) -> str:
    return f"patient{number:03d}"


def convert_acdc(sources: Sequence[str], out: Optional[str] = None, split: str = "paper",
                 dataset_id: Optional[int] = None, name: Optional[str] = None, overwrite: bool = False,
                 num_processes: int = 1) -> ConversionResult:
    """Convert an ACDC download into nnUNet_raw (see the module docstring)."""
    return run_split_conversion("acdc", sources, out, split, dataset_id, name, DEFAULT_IDS, _prepare, overwrite,
                                num_processes)


def _is_patient_folder(folder: str) -> bool:
    return re.fullmatch(r"patient\d{3}", os.path.basename(folder)) is not None


def _prepare(roots: List[str], split: str) -> ConversionPlan:
    parents = sorted({os.path.dirname(f) for f in find_folders(roots, _is_patient_folder)})
    training = [p for p in parents if any(int(d[7:]) <= NUM_PATIENTS for d in os.listdir(p) if _is_patient_folder(d))]
    folder = one_folder(training, "ACDC training folder (patient001 ... patient100)",
                        "Expected the ACDC download (ACDC.zip, database/training/ or training/) with folders "
                        "patientXXX holding patientXXX_frameYY.nii.gz and patientXXX_frameYY_gt.nii.gz.")
    problems, warnings = Problems(), []
    frames: Dict[int, List[str]] = {}  # patient -> case ids
    jobs = []
    for d in sorted(os.listdir(folder)):
        if not _is_patient_folder(d) or int(d[7:]) > NUM_PATIENTS:
            continue
        patient = int(d[7:])
        pdir = os.path.join(folder, d)
        files = files_with_suffix(pdir, ".nii.gz")
        gts = {m.group(1): f for f in files if (m := re.fullmatch(rf"{d}_frame(\d+)_gt\.nii\.gz", f))}
        images = {m.group(1): f for f in files if (m := re.fullmatch(rf"{d}_frame(\d+)\.nii\.gz", f))}
        expected = _ed_es_frames(pdir, problems)
        for frame in sorted(set(gts) | set(images)):
            if frame not in gts:
                if expected and int(frame) in expected:
                    problems.add(images[frame], "has no ground truth file (_gt.nii.gz)")
                continue  # an unlabelled frame: not part of the dataset
            if frame not in images:
                problems.add(gts[frame], f"has no image file {d}_frame{frame}.nii.gz")
                continue
            header = check_volume_pair(os.path.join(pdir, images[frame]), os.path.join(pdir, gts[frame]), problems,
                                       warnings)
            if header is not None and len(header.size) != 3:
                problems.add(images[frame], f"is {len(header.size)}D; expected a 3D frame")
            case = f"{d}_frame{frame}"
            frames.setdefault(patient, []).append(case)
            jobs.append((patient, case, os.path.join(pdir, images[frame]), os.path.join(pdir, gts[frame])))
        if expected and sorted(int(f) for f in gts) != sorted(expected):
            problems.add(d, f"ground truth for frames {sorted(int(f) for f in gts)}, but Info.cfg names ED/ES frames "
                            f"{sorted(expected)}")
        if not gts:
            problems.add(d, "no labelled frames (patientXXX_frameYY_gt.nii.gz)")
    if split == "paper":
        for n in sorted(set(range(1, NUM_PATIENTS + 1)) - set(frames)):
            problems.add(patient_name(n), "missing: the paper split (70/10/20 patients) needs all 100 training "
                                          "patients")
    elif len(frames) < 5:
        problems.add(folder, f"only {len(frames)} patients; a 5-fold cross-validation needs at least 5")
    problems.raise_if_any("ACDC")

    test = set(PAPER_TEST_PATIENTS) if split == "paper" else set()
    case_jobs = [CaseJob(case, "test" if p in test else "train", _write_frame,
                         ("test" if p in test else "train", case, image, gt)) for p, case, image, gt in jobs]
    train_cases = [j.case_id for j in case_jobs if j.role == "train"]
    if split == "paper":
        val = {c for p in PAPER_VAL_PATIENTS for c in frames[p]}
        splits = one_fold([c for c in train_cases if c not in val], sorted(val))
    else:
        splits = grouped_kfold(train_cases, lambda c: c.split("_")[0])
    return ConversionPlan(case_jobs, dataset_json({"0": "cineMRI"}, ACDC_LABELS, len(train_cases), ".nii.gz", "ACDC",
                                                  "ACDC cine-MRI, ED and ES frames of the 100 training patients",
                                                  "acdc", reference="https://www.creatis.insa-lyon.fr/Challenge/acdc/"),
                          splits, warnings)


def _ed_es_frames(patient_dir: str, problems: Problems) -> Optional[List[int]]:
    """The ED and ES frame numbers from Info.cfg, or None (with a problem) when it is missing or unreadable."""
    path = os.path.join(patient_dir, "Info.cfg")
    if not os.path.isfile(path):
        problems.add(os.path.basename(patient_dir), "has no Info.cfg (it names the ED and ES frames)")
        return None
    values = {}
    with open(path, errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            values[key.strip().upper()] = value.strip()
    try:
        return sorted({int(values["ED"]), int(values["ES"])})
    except (KeyError, ValueError):
        problems.add(f"{os.path.basename(patient_dir)}/Info.cfg", "has no integer ED: and ES: lines")
        return None


def _write_frame(dataset_dir: str, role: str, case_id: str, image: str, gt: str) -> Optional[List[str]]:
    try:
        values = read_label_array(gt)
    except ValueError as e:
        return [f"{os.path.basename(gt)}: label file {e}"]
    unexpected = sorted(set(np.unique(values).tolist()) - set(ACDC_LABELS.values()))
    if unexpected:
        return [f"{os.path.basename(gt)}: unexpected label values {unexpected} (ACDC has 0 background, 1 RV, "
                f"2 Myo, 3 LV)"]
    image_out, label_out = case_paths(dataset_dir, role, case_id, ".nii.gz")
    shutil.copyfile(image, image_out)
    write_label_volume(values, sitk.ReadImage(gt), label_out)
    return None
