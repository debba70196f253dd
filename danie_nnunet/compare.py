"""Visual comparison of several models' segmentations, like the paper's Figures 6 and 7.

One row per chosen (case, slice): the image, the ground truth and each model's prediction, every class in its
fixed colour (`visualize.PALETTE`), a legend naming the classes from dataset.json, and optionally boxes around
the regions where the models disagree most (or, with one model, where it disagrees with the ground truth).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .trained_model import read_image
from .visualize import PALETTE, colorize, window

PANEL_PX, HEADER_PX, LEFT_PX, LEGEND_PX, DPI = 200, 28, 26, 40, 100
ABDOMEN_WINDOW = (-160.0, 240.0)  # HU, for channels named CT
BOX_COLOUR = (1.0, 0.0, 0.0)
Box = Tuple[int, int, int, int]  # y0, x0, y1, x1 (inclusive-exclusive)


class CompareError(ValueError):
    """Inputs that cannot be compared, with what to do about it."""


@dataclass
class Row:
    case: str
    slice_index: int
    image: np.ndarray  # (H, W) grey uint8 or (H, W, 3) RGB uint8
    truth: np.ndarray  # (H, W) labels
    predictions: List[np.ndarray]
    aspect: float
    boxes: Sequence[Box] = ()


def parse_case(text: str) -> Tuple[str, Optional[List[int]]]:
    """'case_000' (slice chosen automatically) or 'case_000:3,7' (those slices)."""
    case, _, slices = text.partition(":")
    if not slices:
        return case, None
    try:
        return case, [int(s) for s in slices.split(",") if s]
    except ValueError:
        raise CompareError(f"cannot read the slices of {text!r}: write CASE or CASE:SLICE[,SLICE...]") from None


def parse_prediction(text: str) -> Tuple[str, str]:
    """'NAME=FOLDER' or 'FOLDER' (named after the folder)."""
    name, sep, folder = text.partition("=")
    if not sep:
        name, folder = os.path.basename(os.path.normpath(text)), text
    return name, folder


def disagreement_boxes(truth: np.ndarray, predictions: Sequence[np.ndarray], count: int,
                       margin: int = 2) -> List[Box]:
    """Bounding boxes of the `count` connected regions with the most disagreeing pixels.

    Disagreement is between the models (a pixel where not all predictions agree); with one model, between it
    and the ground truth. Nearby pixels (2 px apart) are merged into one region.
    """
    from scipy import ndimage
    if count <= 0:
        return []
    if len(predictions) >= 2:
        disagree = np.any([p != predictions[0] for p in predictions[1:]], axis=0)
    else:
        disagree = predictions[0] != truth
    if not disagree.any():
        return []
    regions, n = ndimage.label(ndimage.binary_dilation(disagree, iterations=2))
    sizes = ndimage.sum(disagree, regions, index=np.arange(1, n + 1))
    boxes = []
    for label in np.argsort(-sizes)[:count] + 1:
        ys, xs = np.nonzero(regions == label)
        h, w = disagree.shape
        boxes.append((int(max(0, ys.min() - margin)), int(max(0, xs.min() - margin)),
                      int(min(h, ys.max() + 1 + margin)), int(min(w, xs.max() + 1 + margin))))
    return boxes


def _read_labels(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise CompareError(f"segmentation {path} does not exist")
    labels, _ = read_image([path])
    return labels[0].astype(np.int64)


def load_rows(images: str, labels: str, predictions: Sequence[Tuple[str, str]], cases: Sequence[str],
              file_ending: str, boxes: int = 0, ct_window: Optional[Sequence[float]] = None) -> List[Row]:
    """Read the chosen slices of every case: image (first channel, or RGB), truth and each model's prediction."""
    rows = []
    for text in cases:
        case, slices = parse_case(text)
        channels = sorted(f for f in os.listdir(images) if f.startswith(case + "_") and f.endswith(file_ending)
                          and f[len(case) + 1:-len(file_ending)].isdigit())
        if not channels:
            raise CompareError(f"no image {case}_0000{file_ending} in {images}")
        volume, spacing = read_image([os.path.join(images, f) for f in channels])
        truth = _read_labels(os.path.join(labels, case + file_ending))
        preds = [_read_labels(os.path.join(folder, case + file_ending)) for _, folder in predictions]
        for (name, folder), p in zip(predictions, preds):
            if p.shape != truth.shape:
                raise CompareError(f"{os.path.join(folder, case + file_ending)} has shape {p.shape}, the ground "
                                   f"truth {truth.shape}: is '{name}' a prediction of this dataset?")
        if volume.shape[1:] != truth.shape:
            raise CompareError(f"image {channels[0]} has shape {volume.shape[1:]}, its ground truth {truth.shape}")
        if slices is None:
            slices = [int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(1)))]
        for s in slices:
            if not 0 <= s < truth.shape[0]:
                raise CompareError(f"slice {s} of {case} out of range (0-{truth.shape[0] - 1})")
            if volume.shape[0] == 3 and truth.shape[0] == 1:  # a 2D RGB image (ISIC, GlaS)
                image = np.clip(volume[:, s].transpose(1, 2, 0), 0, 255).astype(np.uint8)
            else:
                image = window(volume[0, s], *(ct_window or (None, None)))
            row_preds = [p[s] for p in preds]
            rows.append(Row(case, s, image, truth[s], row_preds, spacing[1] / spacing[2],
                            disagreement_boxes(truth[s], row_preds, boxes)))
    return rows


def grid_size(num_rows: int, num_models: int) -> Tuple[int, int]:
    """(width, height) in pixels of the grid: image, ground truth and one column per model."""
    return LEFT_PX + (2 + num_models) * PANEL_PX, HEADER_PX + num_rows * PANEL_PX + LEGEND_PX


def draw_grid(rows: Sequence[Row], model_names: Sequence[str], class_names: Dict[int, str], out_file: str,
              alpha: float = 0.5) -> Tuple[int, int]:
    """Write the PNG grid (atomically); returns its size in pixels."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from .cam import save_figure_atomically
    width, height = grid_size(len(rows), len(model_names))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    titles = ["image", "ground truth", *model_names]
    for c, title in enumerate(titles):
        fig.text((LEFT_PX + (c + 0.5) * PANEL_PX) / width, 1 - 6 / height, title, ha="center", va="top",
                 fontsize=10)
    for r, row in enumerate(rows):
        bottom = (LEGEND_PX + (len(rows) - 1 - r) * PANEL_PX) / height
        fig.text(LEFT_PX / 2 / width, bottom + PANEL_PX / 2 / height, f"{row.case} z={row.slice_index}",
                 rotation=90, ha="center", va="center", fontsize=8)
        base = row.image if row.image.ndim == 3 else np.repeat(row.image[..., None], 3, -1)
        panels = [base] + [_overlay(row.image, labels, alpha) for labels in [row.truth, *row.predictions]]
        for c, panel in enumerate(panels):
            ax = fig.add_axes(((LEFT_PX + c * PANEL_PX) / width, bottom, PANEL_PX / width, PANEL_PX / height))
            ax.imshow(panel, aspect=row.aspect, interpolation="nearest")
            for y0, x0, y1, x1 in row.boxes:
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR,
                                       linewidth=1.5))
            ax.set_axis_off()
    handles = [Patch(facecolor=PALETTE[(c - 1) % len(PALETTE)] / 255, edgecolor="none", label=name)
               for c, name in sorted(class_names.items()) if c > 0]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False, fontsize=9,
                   bbox_to_anchor=(0.5, 0), handlelength=1.5)
    save_figure_atomically(fig, out_file)
    plt.close(fig)
    return width, height


def _overlay(image: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """Each class blended in its palette colour into the grey (H, W) or RGB (H, W, 3) image."""
    if image.ndim == 2:
        return colorize(image, labels, alpha)
    rgb = image.astype(np.float32)
    for c in range(1, int(labels.max()) + 1):
        mask = labels == c
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * PALETTE[(c - 1) % len(PALETTE)]
    return rgb.astype(np.uint8)


def _dataset_json(explicit: Optional[str], candidates: Sequence[str]) -> dict:
    for path in ([explicit] if explicit else []) + [os.path.join(c, "dataset.json") for c in candidates]:
        if path and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    if explicit:
        raise CompareError(f"dataset.json {explicit} does not exist")
    raise CompareError("no dataset.json found next to the predictions or the labels: give --dataset-json "
                       "(nnUNet_raw/DatasetXXX_Name/dataset.json)")


def compare(images: str, labels: str, predictions: Sequence[str], out_file: str, cases: Sequence[str] = (),
            dataset_json: Optional[str] = None, boxes: int = 0, ct_window: Optional[Sequence[float]] = None) -> dict:
    """Draw the comparison grid; returns what was drawn (size, rows, models, boxes per row)."""
    preds = [parse_prediction(p) for p in predictions]
    if not preds:
        raise CompareError("give at least one prediction folder (NAME=FOLDER)")
    for folder in [images, labels] + [f for _, f in preds]:
        if not os.path.isdir(folder):
            raise CompareError(f"folder {folder} does not exist")
    dataset = _dataset_json(dataset_json, [f for _, f in preds] + [os.path.dirname(os.path.normpath(labels))])
    file_ending = dataset.get("file_ending", ".nii.gz")
    class_names = {int(v): k for k, v in dataset.get("labels", {}).items() if isinstance(v, int)}
    if not cases:
        cases = sorted(f[:-len(file_ending)] for f in os.listdir(labels) if f.endswith(file_ending))
        if not cases:
            raise CompareError(f"no {file_ending} segmentations in {labels}")
    if ct_window is None and str(dataset.get("channel_names", {}).get("0", "")).upper() == "CT":
        ct_window = ABDOMEN_WINDOW
    rows = load_rows(images, labels, preds, cases, file_ending, boxes, ct_window)
    size = draw_grid(rows, [n for n, _ in preds], class_names, out_file)
    return {"out": out_file, "size": size, "rows": [(r.case, r.slice_index) for r in rows],
            "models": [n for n, _ in preds], "boxes": [list(r.boxes) for r in rows]}


# ------------------------------------------------------------------------------------------------------- CLI
def cmd_compare(args) -> int:
    info = compare(args.images, args.labels, args.pred, args.out, args.cases or (), args.dataset_json, args.boxes,
                   args.window)
    print(f"wrote {info['out']} ({info['size'][0]}x{info['size'][1]}): {len(info['rows'])} slice(s) x "
          f"[image, ground truth, {', '.join(info['models'])}]")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="PNG grid of image, ground truth and several models' predictions (Figures 6, 7)",
        description="For chosen cases and slices: image | ground truth | each model's prediction, one fixed colour "
                    "per class and a legend with the class names of dataset.json.")
    p.add_argument("--images", required=True, help="raw images folder (imagesTs: CASE_0000.nii.gz)")
    p.add_argument("--labels", required=True, help="ground-truth folder (labelsTs: CASE.nii.gz)")
    p.add_argument("--pred", nargs="+", required=True, metavar="NAME=FOLDER",
                   help="prediction folders of nnUNetv2_predict, e.g. nnUNet=out_nnunet DANIE=out_danie")
    p.add_argument("--cases", nargs="+", default=None, metavar="CASE[:SLICE,...]",
                   help="cases and slices (default: every case, the slice with the most foreground)")
    p.add_argument("--boxes", type=int, default=0, help="boxes around the N regions where the models differ most")
    p.add_argument("--dataset-json", default=None, help="for the class names (default: found next to the inputs)")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="grey-value window (default: -160 240 for CT, else the 1-99th percentiles)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=cmd_compare)
