"""2D natural images (dermoscopy, histology) as nnU-Net reads them with NaturalImage2DIO.

nnU-Net's convention (nnunetv2 Dataset120_RoadSegmentation, imageio/natural_image_reader_writer.py): ONE RGB PNG
per case, `imagesTr/<case>_0000.png`, whose three colour planes nnU-Net reads as three channels, declared in
dataset.json as `"channel_names": {"0": "R", "1": "G", "2": "B"}`; labels are single-channel PNGs of class indices
(`labelsTr/<case>.png`); `"file_ending": ".png"`. JPEG is not accepted by NaturalImage2DIO (lossy), so JPEG and BMP
inputs are re-encoded losslessly as PNG.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
from PIL import Image

from .validation import Problems
from .writer import case_paths

RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is several times faster than PIL's default 6 on 6000 px images


def image_size(path: str, problems: Problems) -> Optional[tuple]:
    """(width, height) from the header, or None with a problem when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        problems.add(os.path.basename(path), f"cannot be read as an image ({e})")
        return None


def read_mask(path: str) -> np.ndarray:
    """A 2D mask array; an RGB(A) mask with identical colour planes is reduced to one plane."""
    with Image.open(path) as im:
        array = np.asarray(im)
    if array.ndim == 3:
        planes = array[..., :3]
        if not (np.array_equal(planes[..., 0], planes[..., 1]) and np.array_equal(planes[..., 0], planes[..., 2])):
            raise ValueError("is a colour image; expected a single-channel mask")
        array = planes[..., 0]
    return array


def binary_mask(array: np.ndarray, allowed: tuple = (0, 255)) -> np.ndarray:
    """0/1 mask from a mask stored as {0, 255} (or {0, 1}); raises ValueError for other values."""
    values = set(np.unique(array).tolist())
    if not (values <= set(allowed) or values <= {0, 1}):
        raise ValueError(f"has unexpected values {sorted(values - set(allowed) - {0, 1})[:10]} "
                         f"(expected {' and '.join(map(str, allowed))})")
    return (array > 0).astype(np.uint8)


def write_case(dataset_dir: str, role: str, case_id: str, image: str, mask: str, mask_kind: str) -> Optional[List[str]]:
    """Write `<case>_0000.png` (RGB) and `<case>.png` (0/1). mask_kind: 'binary' (values 0/255) or 'instances'
    (0 = background, every other value one object; binarised). Returns problems or None."""
    try:
        array = read_mask(mask)
        label = binary_mask(array) if mask_kind == "binary" else (array > 0).astype(np.uint8)
    except (OSError, ValueError) as e:
        return [f"{os.path.basename(mask)}: {e}"]
    with Image.open(image) as im:
        rgb = im.convert("RGB")
    if rgb.size != (label.shape[1], label.shape[0]):
        return [f"{os.path.basename(image)} / {os.path.basename(mask)}: shape mismatch between image "
                f"{rgb.size[1]}x{rgb.size[0]} and mask {label.shape[0]}x{label.shape[1]}"]
    image_out, label_out = case_paths(dataset_dir, role, case_id, ".png")
    rgb.save(image_out, compress_level=PNG_COMPRESS_LEVEL)
    Image.fromarray(label).save(label_out, compress_level=PNG_COMPRESS_LEVEL)
    return None


def check_pair_sizes(image: str, mask: str, problems: Problems) -> None:
    """Header-only check that image and mask have the same width and height."""
    a, b = image_size(image, problems), image_size(mask, problems)
    if a and b and a != b:
        problems.add(f"{os.path.basename(image)} / {os.path.basename(mask)}",
                     f"shape mismatch between image {a[1]}x{a[0]} and mask {b[1]}x{b[0]}")
