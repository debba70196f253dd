"""Synthetic multi-organ CT-like volumes in nnU-Net's raw format, for the demo and the tests.

Each case is an abdomen-like ellipse of soft tissue in air with five structures at jittered positions and
sizes: liver (1), spleen (2), right kidney (3), left kidney (4) and aorta (5), in Hounsfield-like units with
Gaussian noise. Liver and spleen have similar intensity, and the two kidneys have the same intensity, so
telling them apart needs position, i.e. context, as in real CT.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "aorta": 5}
# (centre y, centre x) as fractions of the in-plane size, radii (ry, rx) as fractions, HU
_ORGANS = {
    "liver": ((0.45, 0.30), (0.20, 0.17), 60.0),
    "spleen": ((0.42, 0.76), (0.10, 0.08), 55.0),
    "kidney_right": ((0.64, 0.35), (0.08, 0.06), 150.0),
    "kidney_left": ((0.64, 0.65), (0.08, 0.06), 150.0),
    "aorta": ((0.58, 0.51), (0.04, 0.04), 220.0),
}


def make_case(rng: np.random.Generator, shape: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """One CT-like volume (z, y, x) in HU (int16) and its label map (uint8)."""
    nz, ny, nx = shape
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx].astype(np.float32)
    z, y, x = z / max(nz - 1, 1), y / ny, x / nx
    image = np.full(shape, -1000.0, np.float32)
    label = np.zeros(shape, np.uint8)
    body = ((y - 0.5) / 0.42) ** 2 + ((x - 0.5) / 0.47) ** 2 <= 1.0
    image[body] = -80.0  # fat
    image[(((y - 0.5) / 0.36) ** 2 + ((x - 0.5) / 0.41) ** 2 <= 1.0)] = 30.0  # muscle/bowel
    for name, ((cy, cx), (ry, rx), hu) in _ORGANS.items():
        cy, cx = cy + rng.normal(0, 0.02), cx + rng.normal(0, 0.02)
        ry, rx = ry * rng.uniform(0.85, 1.15), rx * rng.uniform(0.85, 1.15)
        # organs taper towards the ends of the volume; the aorta runs through all slices
        taper = 1.0 if name == "aorta" else np.clip(1.0 - ((z - rng.uniform(0.4, 0.6)) / 0.55) ** 2, 0, 1)
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= taper
        image[inside] = hu + rng.normal(0, 5)
        label[inside] = LABELS[name]
    image += rng.normal(0, 15, shape).astype(np.float32)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def _write(array: np.ndarray, spacing_zyx: Sequence[float], path: str) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))  # SimpleITK spacing is (x, y, z)
    sitk.WriteImage(img, path, useCompression=True)


def write_dataset(raw_root: str, dataset_id: int = 990, name: str = "DANIEDemo", num_train: int = 8,
                  num_test: int = 2, shape: Tuple[int, int, int] = (16, 64, 64),
                  spacing: Tuple[float, float, float] = (3.0, 1.5, 1.5), seed: int = 0) -> Dict[str, str]:
    """Write Dataset<id>_<name> (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json) under `raw_root`.

    Returns the folder paths. Deterministic for a given seed; rewrites the files if they exist.
    """
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    paths = {k: os.path.join(folder, k) for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_train + num_test):
        split = "Tr" if i < num_train else "Ts"
        case = f"case_{i:03d}"
        image, label = make_case(rng, shape)
        _write(image, spacing, os.path.join(paths[f"images{split}"], f"{case}_0000.nii.gz"))
        _write(label, spacing, os.path.join(paths[f"labels{split}"], f"{case}.nii.gz"))
    dataset_json = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": num_train,
                    "file_ending": ".nii.gz", "name": name,
                    "description": "synthetic CT-like abdomen made by danie_nnunet.synthetic"}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    paths["dataset"] = folder
    return paths
