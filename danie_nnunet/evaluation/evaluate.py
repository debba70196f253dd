"""`evaluate`: a folder of predictions against a folder of references, in the `nnunet` or the `paper` mode."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .benchmarks import Benchmark, get_benchmark
from .cases import IMAGE_ENDINGS, find_dataset_json, pair_cases, read_segmentation, resize_nearest
from .protocols import MODES, PER_CASE_METRICS, case_scores, class_summary, mean_over_classes
from .report import write_report

ClassSpec = Tuple[str, str, int]  # (name, display name, label value)


def resolve_classes(benchmark: Optional[Benchmark], dataset_json: Optional[Dict], labels: Optional[Sequence[int]],
                    notes: List[str]) -> List[ClassSpec]:
    """Which label values are scored, with their names: --labels, else the benchmark's classes found by name in
    dataset.json (Synapse: the 8 organs also in a 13-label dataset), else every foreground label of dataset.json."""
    names: Dict[int, str] = {}
    if dataset_json:
        for name, value in dataset_json.get("labels", {}).items():
            if not isinstance(value, int):
                raise ValueError(f"dataset.json label {name!r} is a region {value}; region-based datasets are not "
                                 f"supported, pass --labels")
            names[value] = name
    if labels:
        return [(names.get(v, f"label_{v}"), names.get(v, f"label {v}"), int(v)) for v in labels]
    if benchmark:
        by_name = {n.lower(): v for v, n in names.items()}
        classes = []
        for name, display, default in benchmark.classes:
            if dataset_json and name.lower() not in by_name:
                notes.append(f"dataset.json has no label named {name!r}: scoring label {default} as {display}")
            classes.append((name, display, by_name.get(name.lower(), default)))
        return classes
    if names:
        return [(n, n, v) for v, n in sorted(names.items()) if v != 0]
    return []


def _score_case(args) -> List[Dict]:
    case, ref_path, pred_path, classes, mode, resize = args
    reference, spacing = read_segmentation(ref_path)
    prediction, pred_spacing = read_segmentation(pred_path)
    if reference.shape != prediction.shape:
        raise ValueError(f"{case}: prediction shape {prediction.shape} differs from the reference {reference.shape}")
    if not np.allclose(spacing, pred_spacing, rtol=1e-3):
        raise ValueError(f"{case}: prediction spacing {pred_spacing} differs from the reference {spacing}")
    if resize:
        if reference.ndim != 2:
            raise ValueError(f"{case}: --resize applies to 2D images, this case is {reference.ndim}D")
        reference, prediction = resize_nearest(reference, resize), resize_nearest(prediction, resize)
        spacing = (1.0, 1.0)
    return [{"case": case, "class": name, "label": value,
             **case_scores(mode, reference == value, prediction == value, spacing)}
            for name, _, value in classes]


def evaluate(reference_dir: str, prediction_dir: str, out_dir: str, mode: str = "nnunet",
             dataset: Optional[str] = None, labels: Optional[Sequence[int]] = None,
             dataset_json: Optional[str] = None, name: Optional[str] = None, resize: Optional[int] = None,
             file_ending: Optional[str] = None, num_processes: int = 1, chill: bool = False) -> Dict:
    """Score every reference case against the prediction of the same file name and write the report.

    mode: `nnunet` or `paper` (danie_nnunet.evaluation.protocols). dataset: synapse, acdc, isic2017, isic2018 or
    glas for the paper's table (default: dataset.json's `danie_benchmark`, written by `danie-nnunet convert`).
    resize: 2D only, masks resized to N x N (nearest) before scoring; default in the paper mode: the benchmark's
    `paper_resize`; 0 disables. chill: score only the references that have a prediction. Returns the summary
    (also written to out_dir/summary.json).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    ds_json = find_dataset_json(reference_dir, prediction_dir, dataset_json)
    benchmark = get_benchmark(dataset or (ds_json or {}).get("danie_benchmark"))
    notes: List[str] = []
    pairs = pair_cases(reference_dir, prediction_dir, file_ending or (ds_json or {}).get("file_ending"), chill)
    classes = resolve_classes(benchmark, ds_json, labels, notes)
    if not classes:
        values = set()
        for _, ref, _ in pairs:
            values |= set(np.unique(read_segmentation(ref)[0]).tolist())
        classes = [(f"label_{v}", f"label {v}", int(v)) for v in sorted(values - {0})]
        if not classes:
            raise ValueError("no foreground labels: the references are empty and no --labels or dataset.json given")
    if resize is None:
        resize = benchmark.paper_resize if (mode == "paper" and benchmark and not benchmark.volumetric) else None
    resize = resize or None
    jobs = [(case, ref, pred, classes, mode, resize) for case, ref, pred in pairs]
    records: List[Dict] = []
    desc = f"evaluating ({mode} mode)"
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            for result in tqdm(pool.map(_score_case, jobs), total=len(jobs), desc=desc, unit="case"):
                records += result
    else:
        for job in tqdm(jobs, desc=desc, unit="case"):
            records += _score_case(job)

    per_class = {}
    for cname, display, value in classes:
        summary = class_summary([r for r in records if r["class"] == cname], mode)
        per_class[cname] = {"label": value, "display": display, **summary}
    mean = {m: mean_over_classes(per_class, m) for m in PER_CASE_METRICS}
    mean["pooled"] = {m: mean_over_classes(per_class, m, pooled=True)
                      for m in ("Dice", "IoU", "Sensitivity", "Specificity", "Accuracy")}
    is_image = pairs[0][1].lower().endswith(IMAGE_ENDINGS)
    unit = "pixels" if is_image else ("voxels" if mode == "paper" else "mm")
    summary = {"name": name or os.path.basename(os.path.abspath(prediction_dir)), "mode": mode,
               "dataset": benchmark.key if benchmark else None, "num_cases": len(pairs), "resize": resize,
               "units": {"HD95": unit, "ASD": unit}, "classes": per_class, "mean": mean, "notes": notes,
               "reference_dir": os.path.abspath(reference_dir), "prediction_dir": os.path.abspath(prediction_dir)}
    table = benchmark
    if benchmark and {n for n, _, _ in benchmark.classes} - set(per_class):
        table = None
        notes.append(f"the scored classes are not the {benchmark.table} classes of {benchmark.title}: the paper's "
                     f"table is left out")
    paths = write_report(out_dir, records, summary, table)
    for note in notes:
        print(f"note: {note}")
    print(f"{len(pairs)} cases, {len(classes)} classes ({mode} mode): mean Dice {100 * mean['Dice']:.2f}; "
          f"report in {paths['table']}")
    return summary
