"""Overlay PNGs: image | ground truth | prediction, one fixed colour per class."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image

# a fixed palette (RGB), class 1 first; colour-blind-friendly first entries (Okabe-Ito)
PALETTE = np.array([(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
                    (213, 94, 0), (204, 121, 167), (255, 255, 255), (128, 0, 0), (0, 128, 128),
                    (128, 128, 0), (128, 0, 128), (0, 0, 128)], dtype=np.float32)


def window(image: np.ndarray, low: Optional[float] = None, high: Optional[float] = None) -> np.ndarray:
    """Grey values in [0, 255]: a CT window when given, else the 1st-99th percentile range."""
    if low is None or high is None:
        low, high = np.percentile(image, (1, 99))
    return (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def colorize(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for c in range(1, int(labels.max()) + 1):
        mask = labels == c
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * PALETTE[(c - 1) % len(PALETTE)]
    return rgb.astype(np.uint8)


def overlay_png(image_file: str, label_files: Sequence[str], out_file: str, slice_index: Optional[int] = None,
                ct_window: Optional[Sequence[float]] = (-160, 240), scale: int = 4) -> int:
    """Write [image, overlay(label_files[0]), overlay(label_files[1]), ...] side by side for one axial slice.

    The slice defaults to the one with the most foreground in the first label file. Returns the slice index.
    """
    image = sitk.GetArrayFromImage(sitk.ReadImage(image_file)).astype(np.float32)
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(f)) for f in label_files]
    if image.ndim == 2:
        image, labels = image[None], [lab[None] for lab in labels]
    if slice_index is None:
        slice_index = int(np.argmax((labels[0] > 0).reshape(labels[0].shape[0], -1).sum(1)))
    grey = window(image[slice_index], *(ct_window or (None, None)))
    panels = [np.repeat(grey[..., None], 3, axis=-1)] + [colorize(grey, lab[slice_index]) for lab in labels]
    row = np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], axis=1)
    img = Image.fromarray(row)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(out_file)
    return slice_index
