"""Reading reference and predicted segmentations, and pairing them by case name."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from PIL import Image

VOLUME_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd")
IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")


def file_ending(name: str) -> Optional[str]:
    lower = name.lower()
    for ending in VOLUME_ENDINGS + IMAGE_ENDINGS:
        if lower.endswith(ending):
            return ending
    return None


def read_segmentation(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Label array and its spacing per array axis (volumes: z, y, x in mm; images: 1 x 1 pixels)."""
    ending = file_ending(path)
    if ending in IMAGE_ENDINGS:
        with Image.open(path) as im:
            array = np.asarray(im)
        if array.ndim == 3:  # a label saved as RGB: all planes must agree
            if not all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, min(array.shape[-1], 3))):
                raise ValueError(f"{path} is a colour image, not a label map")
            array = array[..., 0]
        return array, (1.0,) * array.ndim
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def pair_cases(reference_dir: str, prediction_dir: str, ending: Optional[str] = None, chill: bool = False
               ) -> List[Tuple[str, str, str]]:
    """(case, reference file, prediction file) for every reference; a clear error listing missing predictions
    (chill, like nnU-Net's --chill: only the references that have a prediction, at least one)."""
    for folder, what in ((reference_dir, "reference"), (prediction_dir, "prediction")):
        if not os.path.isdir(folder):
            raise ValueError(f"{what} folder {folder} does not exist")
    refs = {f: e for f in sorted(os.listdir(reference_dir)) if (e := file_ending(f)) and not f.startswith(".")}
    if ending:
        refs = {f: e for f, e in refs.items() if e == ending}
    if not refs:
        raise ValueError(f"no segmentation files ({', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)}) in {reference_dir}")
    endings = set(refs.values())
    if len(endings) > 1:
        raise ValueError(f"{reference_dir} mixes file types {sorted(endings)}; pass --file-ending")
    missing = [f for f in refs if not os.path.isfile(os.path.join(prediction_dir, f))]
    if chill and len(missing) < len(refs):
        refs = {f: e for f, e in refs.items() if f not in missing}
    elif missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} of {len(refs)} references have no prediction in {prediction_dir}: {shown}"
                         + ("" if chill else " (--chill evaluates only the cases that have one)"))
    return [(f[: -len(e)], os.path.join(reference_dir, f), os.path.join(prediction_dir, f)) for f, e in refs.items()]


def find_dataset_json(reference_dir: str, prediction_dir: str, given: Optional[str] = None) -> Optional[Dict]:
    """The dataset.json given, or the one next to the references (raw dataset) or in the prediction folder
    (nnUNetv2_predict copies it there)."""
    candidates = [given] if given else [os.path.join(os.path.dirname(os.path.abspath(reference_dir)), "dataset.json"),
                                        os.path.join(prediction_dir, "dataset.json")]
    for path in candidates:
        if path and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    if given:
        raise ValueError(f"{given} does not exist")
    return None


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """A 2D label map resized to size x size by nearest neighbour (pixel centres)."""
    rows = np.minimum(((np.arange(size) + 0.5) * array.shape[0] / size).astype(int), array.shape[0] - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * array.shape[1] / size).astype(int), array.shape[1] - 1)
    return array[np.ix_(rows, cols)]
