"""The two evaluation modes: how one case of one class is scored, and how cases are averaged.

`nnunet` (honest): each case in its own geometry, 3D volumes as volumes, distances in millimetres from the voxel
spacing (natural images: pixels). Empty structures are explicit, as in nnU-Net:
  - both reference and prediction empty: Dice, IoU, HD95, ASD are NaN (nothing to score; left out of means);
  - reference empty, prediction not (spurious) or prediction empty, reference not (missed): Dice = IoU = 0,
    HD95 = ASD = inf.
  Means over cases ignore NaN; HD95/ASD means are over the cases with both masks non-empty (finite values), and
  the summary counts the missed, spurious and both-empty cases per class, so nothing is hidden.

`paper` (the TransUNet lineage, to compare with the paper's Tables 1-4): medpy-style definitions on the voxel grid
with NO spacing (distances in voxels), and the edge cases of TransUNet's / CASCADE's `calculate_metric_percase`:
  - prediction and reference non-empty: the computed values;
  - prediction non-empty, reference empty: Dice = IoU = 1, HD95 = ASD = 0;
  - prediction empty: Dice = IoU = HD95 = ASD = 0 (a missed organ scores 0 Dice and 0 HD95; so does an organ
    absent from both).
  Every case counts in the plain mean over cases (per class), then the mean over classes. Sensitivity,
  specificity and accuracy use 0 for an empty denominator (BCDU-Net's guard). For ISIC the lineage (BCDU-Net,
  HiFormer) pools the confusion counts of all test pixels before computing DICE/SE/SP/ACC: `pooled` holds those.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

from . import metrics as M

MODES = ("nnunet", "paper")
PER_CASE_METRICS = ("Dice", "IoU", "HD95", "ASD", "Sensitivity", "Specificity", "Accuracy")
DISTANCE_METRICS = ("HD95", "ASD")
NAN, INF = float("nan"), float("inf")


def nnunet_case(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """One class of one case in the `nnunet` mode (see the module docstring)."""
    c = M.confusion(reference, prediction)
    scores = {"Dice": M.dice(c), "IoU": M.iou(c), "Sensitivity": M.sensitivity(c), "Specificity": M.specificity(c),
              "Accuracy": M.accuracy(c)}
    if c.n_ref and c.n_pred:
        d_pr, d_rp = M.surface_distances(prediction, reference, spacing)
        scores.update(HD95=M.hd95(d_pr, d_rp), ASD=M.assd(d_pr, d_rp))
    else:
        scores.update(HD95=NAN if c.n_ref == c.n_pred == 0 else INF, ASD=NAN if c.n_ref == c.n_pred == 0 else INF)
    return {**scores, **_counts(c)}


def paper_case(reference: np.ndarray, prediction: np.ndarray) -> Dict[str, float]:
    """One class of one case in the `paper` mode (TransUNet's calculate_metric_percase, voxel units)."""
    c = M.confusion(reference, prediction)
    scores = {"Sensitivity": M.sensitivity(c, 0.0), "Specificity": M.specificity(c, 0.0), "Accuracy": M.accuracy(c)}
    if c.n_pred and c.n_ref:
        d_pr, d_rp = M.surface_distances(prediction, reference, None)
        scores.update(Dice=M.dice(c), IoU=M.iou(c), HD95=M.hd95(d_pr, d_rp), ASD=M.assd(d_pr, d_rp))
    elif c.n_pred:
        scores.update(Dice=1.0, IoU=1.0, HD95=0.0, ASD=0.0)
    else:
        scores.update(Dice=0.0, IoU=0.0, HD95=0.0, ASD=0.0)
    return {**scores, **_counts(c)}


def _counts(c: M.Confusion) -> Dict[str, float]:
    return {"TP": c.tp, "FP": c.fp, "FN": c.fn, "TN": c.tn, "n_ref": c.n_ref, "n_pred": c.n_pred}


def mean_over_cases(values: Sequence[float], mode: str, metric: str) -> float:
    """The class mean of one metric over cases, as the mode defines it."""
    array = np.asarray(values, dtype=float)
    if mode == "paper":
        return float(array.mean()) if array.size else NAN
    keep = np.isfinite(array) if metric in DISTANCE_METRICS else ~np.isnan(array)
    return float(array[keep].mean()) if keep.any() else NAN


def class_summary(records: Sequence[Dict[str, float]], mode: str) -> Dict[str, float]:
    """Means over the cases of one class, plus the counts that make the `nnunet` mode's NaN/inf handling visible
    and the metrics of the pooled confusion counts."""
    out: Dict[str, float] = {m: mean_over_cases([r[m] for r in records], mode, m) for m in PER_CASE_METRICS}
    out["n_cases"] = len(records)
    out["n_both_empty"] = sum(1 for r in records if r["n_ref"] == 0 and r["n_pred"] == 0)
    out["n_missed"] = sum(1 for r in records if r["n_ref"] > 0 and r["n_pred"] == 0)
    out["n_spurious"] = sum(1 for r in records if r["n_ref"] == 0 and r["n_pred"] > 0)
    pooled = M.Confusion(0, 0, 0, 0)
    for r in records:
        pooled = pooled + M.Confusion(int(r["TP"]), int(r["FP"]), int(r["FN"]), int(r["TN"]))
    empty = 0.0 if mode == "paper" else NAN
    out["pooled"] = {"Dice": M.dice(pooled, empty), "IoU": M.iou(pooled, empty),
                     "Sensitivity": M.sensitivity(pooled, empty), "Specificity": M.specificity(pooled, empty),
                     "Accuracy": M.accuracy(pooled)}
    return out


def mean_over_classes(class_summaries: Dict[str, Dict[str, float]], metric: str,
                      pooled: bool = False) -> float:
    """Mean over classes of the class means (nnU-Net's foreground mean, the paper's "mDICE" etc.)."""
    values = [(s["pooled"] if pooled else s)[metric] for s in class_summaries.values()]
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else NAN


def case_scores(mode: str, reference: np.ndarray, prediction: np.ndarray,
                spacing: Optional[Sequence[float]]) -> Dict[str, float]:
    if mode == "nnunet":
        return nnunet_case(reference, prediction, spacing)
    if mode == "paper":
        return paper_case(reference, prediction)
    raise ValueError(f"unknown evaluation mode {mode!r}: use one of {', '.join(MODES)}")
