"""The paper's five benchmarks: classes, the columns of its Tables 1-4, and its DANIE-S / DANIE-L numbers.

Numbers are transcribed from the paper (Li et al., ECAI 2024, Tables 1-4), in %, ASD in voxels. Table 2's DANIE-L
RV is 90.12 in the table and 90.17 in the text; the table's value is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Column:
    header: str
    metric: str  # a per-case metric name (protocols.PER_CASE_METRICS)
    klass: Optional[str] = None  # a class name: that class's mean; None: the mean over classes
    percent: bool = True  # shown x100 (overlap metrics) or as is (distances)
    pooled: bool = False  # from the pooled confusion counts (the ISIC lineage's global metrics)


@dataclass(frozen=True)
class Benchmark:
    key: str
    table: str  # which of the paper's tables
    title: str
    classes: Tuple[Tuple[str, str, int], ...]  # (name in dataset.json, display name, default label value)
    columns: Tuple[Column, ...]
    paper_rows: Dict[str, Tuple[float, ...]]  # row name -> values in the order of `columns`
    volumetric: bool  # 3D volumes (Synapse, ACDC) or 2D images (ISIC, GlaS)
    paper_resize: Optional[int] = None  # 2D: masks resized (nearest) to N x N in the paper mode
    note: str = ""


_SYNAPSE_CLASSES = (("aorta", "Aorta", 1), ("gallbladder", "Gallbladder", 2), ("kidney_left", "Kidney(L)", 3),
                    ("kidney_right", "Kidney(R)", 4), ("liver", "Liver", 5), ("pancreas", "Pancreas", 6),
                    ("spleen", "Spleen", 7), ("stomach", "Stomach", 8))


def _lesion(key: str, year: str, s: Tuple[float, ...], l: Tuple[float, ...]) -> Benchmark:
    return Benchmark(
        key, "Table 3", f"ISIC {year} skin lesion segmentation", (("lesion", "Lesion", 1),),
        (Column("DICE↑", "Dice", pooled=True), Column("SE↑", "Sensitivity", pooled=True),
         Column("SP↑", "Specificity", pooled=True), Column("ACC↑", "Accuracy", pooled=True)),
        {"DANIE-S (paper)": s, "DANIE-L (paper)": l}, volumetric=False, paper_resize=224,
        note="The ISIC lineage (BCDU-Net, HiFormer) pools the confusion counts of all test pixels (global DICE, SE, "
             "SP, ACC); the paper mode does the same, on masks resized to 224 x 224.")


BENCHMARKS: Dict[str, Benchmark] = {b.key: b for b in (
    Benchmark(
        "synapse", "Table 1", "Synapse multi-organ CT, 8 organs", _SYNAPSE_CLASSES,
        (Column("DICE↑", "Dice"), Column("mIoU↑", "IoU"), Column("ASD↓", "ASD", percent=False))
        + tuple(Column(display, "Dice", name) for name, display, _ in _SYNAPSE_CLASSES),
        {"DANIE-S (paper)": (84.21, 75.42, 3.65, 87.31, 73.11, 85.29, 83.86, 95.20, 70.20, 92.85, 85.90),
         "DANIE-L (paper)": (85.47, 76.60, 2.76, 88.17, 77.80, 88.59, 84.68, 94.84, 71.94, 91.95, 85.82)},
        volumetric=True,
        note="Per-organ columns are DICE. The paper's GFLOPs column (DANIE-S 13.29, DANIE-L 26.55) is not an "
             "evaluation result and is left out."),
    Benchmark(
        "acdc", "Table 2", "ACDC cardiac MRI", (("RV", "RV", 1), ("Myo", "Myo", 2), ("LV", "LV", 3)),
        (Column("mDICE↑", "Dice"), Column("RV↑", "Dice", "RV"), Column("Myo↑", "Dice", "Myo"),
         Column("LV↑", "Dice", "LV")),
        {"DANIE-S (paper)": (91.96, 89.61, 90.37, 95.89), "DANIE-L (paper)": (92.36, 90.12, 90.99, 96.00)},
        volumetric=True),
    _lesion("isic2017", "2017", (93.84, 92.92, 98.73, 97.58), (94.25, 94.10, 98.61, 97.72)),
    _lesion("isic2018", "2018", (93.32, 95.34, 96.63, 96.28), (93.47, 94.17, 97.27, 96.43)),
    Benchmark(
        "glas", "Table 4", "GlaS gland segmentation", (("gland", "Gland", 1),),
        (Column("mDICE↑", "Dice"), Column("mIoU↑", "IoU")),
        {"DANIE-S (paper)": (91.28, 84.23), "DANIE-L (paper)": (92.65, 86.28)},
        volumetric=False, paper_resize=224,
        note="Dice and IoU per image, averaged over the test images; the paper mode resizes masks to 224 x 224."),
)}


def get_benchmark(key: Optional[str]) -> Optional[Benchmark]:
    if key is None:
        return None
    try:
        return BENCHMARKS[key.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {key!r}: use one of {', '.join(BENCHMARKS)}") from None
