"""Synapse multi-organ CT (BTCV, MICCAI 2015 "Beyond the Cranial Vault") -> nnU-Net raw dataset.

Accepted input (folder or archive):
- the official download `RawData.zip` / `RawData/Training/{img,label}/{img,label}XXXX.nii.gz` (30 labelled CTs,
  13 organs), converted to the TransUNet 8-organ protocol (default) or with all 13 labels;
- the TransUNet preprocessed layout most 2D-lineage users already have: `train_npz/caseXXXX_sliceYYY.npz` (the 18
  training cases as 2D slices, keys image/label) and `test_vol_h5/caseXXXX.npy.h5` (the 12 test volumes). These hold
  CT clipped to [-125, 275] and scaled to [0, 1], 8 organs, and no voxel spacing: they are written with spacing
  1 x 1 x 1 (so nnU-Net keeps the 512 x 512 grid and distances come out in voxels, as in the lineage) and
  channel name "noNorm" (the intensities are used as they are, as TransUNet does).

Splits: `paper` = TransUNet's fixed 18 train / 12 test split as a one-fold splits_final.json (all 30 cases in
imagesTr, fold 0 trains on the 18 and validates on the 12) with the 12 test cases also in imagesTs/labelsTs;
`cv5` = all 30 cases in imagesTr and no split file, so nnU-Net makes its own 5-fold CV.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .layout import files_with_suffix, find_folders, has_subfolders, one_folder
from .splits import one_fold
from .validation import Problems, check_volume_pair, read_label_array
from .writer import (CaseJob, ConversionPlan, ConversionResult, case_paths, dataset_json, run_conversion,
                     write_label_volume)

# Beckschen/TransUNet lists/lists_Synapse: train.txt (2211 slices of these 18 cases) and test_vol.txt
TRANSUNET_TRAIN_IDS = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
TRANSUNET_TEST_IDS = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)

BTCV_LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "esophagus": 5,
               "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9, "portal_and_splenic_vein": 10,
               "pancreas": 11, "adrenal_gland_right": 12, "adrenal_gland_left": 13}
# The label values of TransUNet's preprocessed data (verified voxel-wise against the BTCV labels by third parties)
# and the column order of the paper's Table 1: Aorta, Gallbladder, Kidney(L), Kidney(R), Liver, Pancreas, Spleen,
# Stomach. The other five BTCV organs become background.
SYNAPSE8_ORGANS = ("aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach")
SYNAPSE8_LABELS = {"background": 0, **{organ: i + 1 for i, organ in enumerate(SYNAPSE8_ORGANS)}}

DEFAULT_IDS = {("raw", "8", "paper"): (701, "Synapse"), ("raw", "8", "cv5"): (702, "SynapseCV"),
               ("raw", "13", "paper"): (703, "Synapse13"), ("raw", "13", "cv5"): (704, "Synapse13CV"),
               ("transunet", "8", "paper"): (705, "SynapseTransUNet"),
               ("transunet", "8", "cv5"): (706, "SynapseTransUNetCV")}


def btcv_to_synapse8() -> np.ndarray:
    """Lookup table: BTCV label value -> 8-organ label value."""
    lut = np.zeros(len(BTCV_LABELS), np.uint8)
    for organ, value in SYNAPSE8_LABELS.items():
        lut[BTCV_LABELS[organ]] = value
    return lut


def case_name(number: int) -> str:
    return f"case{number:04d}"


def convert_synapse(sources: Sequence[str], out: Optional[str] = None, labels: str = "8", split: str = "paper",
                    dataset_id: Optional[int] = None, name: Optional[str] = None, overwrite: bool = False,
                    num_processes: int = 1) -> ConversionResult:
    """Convert a Synapse download (official BTCV layout or TransUNet's npz/h5) into nnUNet_raw."""
    if labels not in ("8", "13"):
        raise ValueError(f"--labels must be 8 (TransUNet's organs) or 13 (all BTCV organs), not {labels}")
    if split not in ("paper", "cv5"):
        raise ValueError(f"--split must be paper or cv5, not {split}")
    layout = _detect_layout(sources)
    if layout == "transunet" and labels == "13":
        raise ValueError("the TransUNet npz/h5 data hold only the 8 organs: use --labels 8, or convert the official "
                         "RawData download for all 13")
    default_id, default_name = DEFAULT_IDS[(layout, labels, split)]
    options = {"layout": layout, "labels": labels, "split": split}

    def prepare(roots: List[str]) -> ConversionPlan:
        if layout == "transunet":
            return _prepare_transunet(roots, split)
        return _prepare_btcv(roots, labels, split)

    return run_conversion("synapse", sources, out, dataset_id or default_id, name or default_name, options,
                          prepare, overwrite, num_processes)


def _detect_layout(sources: Sequence[str]) -> str:
    """'transunet' when a train_npz or test_vol_h5 folder is given or inside a given folder, else 'raw'."""
    for source in sources:
        source = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(source) and (os.path.basename(source.rstrip(os.sep)) in ("train_npz", "test_vol_h5")
                                      or find_folders([source], has_subfolders("train_npz"), max_depth=3)
                                      or find_folders([source], has_subfolders("test_vol_h5"), max_depth=3)):
            return "transunet"
    return "raw"


def _splits(split: str):
    """(splits_final.json content, cases also written to imagesTs/labelsTs) for TransUNet's split or for cv5."""
    if split == "cv5":
        return None, ()
    train = [case_name(i) for i in TRANSUNET_TRAIN_IDS]
    test = [case_name(i) for i in TRANSUNET_TEST_IDS]
    return one_fold(train, test), test


def _prepare_btcv(roots: List[str], labels: str, split: str) -> ConversionPlan:
    folder = one_folder(
        find_folders(roots, lambda f: has_subfolders("img", "label")(f) and bool(
            files_with_suffix(os.path.join(f, "label"), ".nii.gz"))),
        "BTCV training folder (img/ and label/ with labelXXXX.nii.gz)",
        "Expected the Synapse download RawData.zip or its RawData/Training folder with img/imgXXXX.nii.gz and "
        "label/labelXXXX.nii.gz, or TransUNet's train_npz/ and test_vol_h5/ folders.")
    problems, warnings = Problems(), []
    images = _numbered(os.path.join(folder, "img"), "img", problems)
    labels_ = _numbered(os.path.join(folder, "label"), "label", problems)
    cases = sorted(set(images) | set(labels_))
    for n in cases:
        if n not in labels_:
            problems.add(os.path.basename(images[n]), f"has no label file label{n:04d}.nii.gz")
        elif n not in images:
            problems.add(os.path.basename(labels_[n]), f"has no image file img{n:04d}.nii.gz")
        else:
            check_volume_pair(images[n], labels_[n], problems, warnings)
    if split == "paper":
        missing = sorted(set(TRANSUNET_TRAIN_IDS + TRANSUNET_TEST_IDS) - set(images) - set(labels_))
        for n in missing:
            problems.add(f"img{n:04d}.nii.gz", "missing: the paper split (TransUNet's 18 train / 12 test) needs all "
                                               "30 BTCV training cases")
    elif len(cases) < 5:
        problems.add(folder, f"only {len(cases)} cases; a 5-fold cross-validation needs at least 5")
    problems.raise_if_any("Synapse")
    lut = btcv_to_synapse8() if labels == "8" else np.arange(len(BTCV_LABELS), dtype=np.uint8)
    label_map = SYNAPSE8_LABELS if labels == "8" else BTCV_LABELS
    jobs = [CaseJob(case_name(n), "train", _write_btcv_case, (case_name(n), images[n], labels_[n], lut))
            for n in cases]
    splits, also_test = _splits(split)
    description = ("Synapse multi-organ CT (BTCV): TransUNet's 8 organs, other labels set to background"
                   if labels == "8" else "Synapse multi-organ CT (BTCV), all 13 organs")
    return ConversionPlan(jobs, dataset_json({"0": "CT"}, label_map, len(jobs), ".nii.gz", "Synapse", description,
                                             "synapse", reference="https://www.synapse.org/#!Synapse:syn3193805"),
                          splits, warnings, also_test)


def _numbered(folder: str, prefix: str, problems: Problems) -> Dict[int, str]:
    found = {}
    for f in files_with_suffix(folder, ".nii.gz"):
        m = re.fullmatch(rf"{prefix}(\d+)\.nii\.gz", f)
        if m:
            found[int(m.group(1))] = os.path.join(folder, f)
        else:
            problems.add(f, f"unexpected file name in {prefix}/ (expected {prefix}XXXX.nii.gz)")
    return found


def _write_btcv_case(dataset_dir: str, case_id: str, image: str, label: str, lut: np.ndarray) -> Optional[List[str]]:
    image_out, label_out = case_paths(dataset_dir, "train", case_id, ".nii.gz")
    label_image = sitk.ReadImage(label)
    try:
        values = read_label_array(label)
    except ValueError as e:
        return [f"{os.path.basename(label)}: label file {e}"]
    unexpected = sorted(set(np.unique(values).tolist()) - set(range(len(lut))))
    if unexpected:
        return [f"{os.path.basename(label)}: unexpected label values {unexpected} (BTCV has 0..13)"]
    shutil.copyfile(image, image_out)
    write_label_volume(lut[values], label_image, label_out)
    return None


# --- TransUNet's preprocessed layout -------------------------------------------------------------------------------

def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ValueError("reading TransUNet's test_vol_h5/*.npy.h5 needs the h5py package: pip install h5py") from None
    return h5py


def _prepare_transunet(roots: List[str], split: str) -> ConversionPlan:
    hint = "Expected TransUNet's Synapse folder with train_npz/caseXXXX_sliceYYY.npz and test_vol_h5/caseXXXX.npy.h5."
    npz_dir = one_folder(find_folders(roots, lambda f: os.path.basename(f) == "train_npz"), "train_npz folder", hint)
    h5_dir = one_folder(find_folders(roots, lambda f: os.path.basename(f) == "test_vol_h5"), "test_vol_h5 folder",
                        hint)
    _import_h5py()
    problems = Problems()
    slices: Dict[int, Dict[int, str]] = {}
    for f in files_with_suffix(npz_dir, ".npz"):
        m = re.fullmatch(r"case(\d+)_slice(\d+)\.npz", f)
        if not m:
            problems.add(f, "unexpected file name in train_npz/ (expected caseXXXX_sliceYYY.npz)")
            continue
        slices.setdefault(int(m.group(1)), {})[int(m.group(2))] = os.path.join(npz_dir, f)
    volumes = {}
    for f in files_with_suffix(h5_dir, ".h5"):
        m = re.fullmatch(r"case(\d+)\.npy\.h5", f)
        if m:
            volumes[int(m.group(1))] = os.path.join(h5_dir, f)
        else:
            problems.add(f, "unexpected file name in test_vol_h5/ (expected caseXXXX.npy.h5)")
    for n, case_slices in sorted(slices.items()):
        gaps = sorted(set(range(max(case_slices) + 1)) - set(case_slices))
        if gaps:
            problems.add(f"{case_name(n)}_slice*.npz", f"slices {gaps} are missing (the volume would have holes)")
        if n in volumes:
            problems.add(f"{case_name(n)}", "is in both train_npz/ and test_vol_h5/")
    for n in sorted(set(TRANSUNET_TRAIN_IDS) - set(slices)):
        problems.add(f"{case_name(n)}_slice*.npz", "missing in train_npz/ (TransUNet's 18 training cases)")
    for n in sorted(set(TRANSUNET_TEST_IDS) - set(volumes)):
        problems.add(f"{case_name(n)}.npy.h5", "missing in test_vol_h5/ (TransUNet's 12 test cases)")
    problems.raise_if_any("Synapse (TransUNet layout)")
    jobs = [CaseJob(case_name(n), "train", _write_npz_case, (case_name(n), [s[k] for k in sorted(s)]))
            for n, s in sorted(slices.items())]
    jobs += [CaseJob(case_name(n), "train", _write_h5_case, (case_name(n), path))
             for n, path in sorted(volumes.items())]
    jobs.sort(key=lambda j: j.case_id)
    splits, also_test = _splits(split)
    notes = ["TransUNet's data carry no voxel spacing: written with spacing 1 x 1 x 1 mm (distances are in voxels)"]
    return ConversionPlan(jobs, dataset_json({"0": "noNorm"}, SYNAPSE8_LABELS, len(jobs), ".nii.gz", "Synapse",
                                             "Synapse multi-organ CT as preprocessed by TransUNet (8 organs, "
                                             "CT clipped to [-125, 275] and scaled to [0, 1])", "synapse"),
                          splits, notes, also_test)


def _check_slice(where: str, image: np.ndarray, label: np.ndarray, expected_shape) -> Optional[str]:
    if image.shape != label.shape:
        return f"{where}: shape mismatch between image {image.shape} and label {label.shape}"
    if expected_shape is not None and image.shape != expected_shape:
        return f"{where}: shape {image.shape} differs from the case's other slices {expected_shape}"
    if not np.all(label == np.round(label)):
        return f"{where}: label has non-integer values"
    unexpected = sorted(set(np.unique(label).astype(int).tolist()) - set(range(9)))
    if unexpected:
        return f"{where}: unexpected label values {unexpected} (TransUNet's data have 0..8)"
    return None


def _write_volume_pair(dataset_dir: str, case_id: str, image: np.ndarray, label: np.ndarray) -> None:
    image_out, label_out = case_paths(dataset_dir, "train", case_id, ".nii.gz")
    itk = sitk.GetImageFromArray(image.astype(np.float32))
    sitk.WriteImage(itk, image_out, useCompression=True)
    write_label_volume(label.astype(np.uint8), itk, label_out)


def _write_npz_case(dataset_dir: str, case_id: str, slice_files: List[str]) -> Optional[List[str]]:
    images, labels, shape = [], [], None
    for f in slice_files:
        try:
            with np.load(f, allow_pickle=False) as data:
                image, label = np.asarray(data["image"]), np.asarray(data["label"])
        except (OSError, ValueError, KeyError) as e:
            return [f"{os.path.basename(f)}: not a TransUNet slice with 'image' and 'label' arrays ({e})"]
        problem = _check_slice(os.path.basename(f), image, label, shape)
        if problem:
            return [problem]
        shape = image.shape
        images.append(image)
        labels.append(label)
    _write_volume_pair(dataset_dir, case_id, np.stack(images), np.stack(labels))
    return None


def _write_h5_case(dataset_dir: str, case_id: str, path: str) -> Optional[List[str]]:
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as data:
            image, label = np.asarray(data["image"]), np.asarray(data["label"])
    except (OSError, KeyError) as e:
        return [f"{os.path.basename(path)}: not a TransUNet volume with 'image' and 'label' datasets ({e})"]
    if image.ndim != 3:
        return [f"{os.path.basename(path)}: image has {image.ndim} dimensions, expected a 3D volume"]
    problem = _check_slice(os.path.basename(path), image, label, None)
    if problem:
        return [problem]
    _write_volume_pair(dataset_dir, case_id, image, label)
    return None
