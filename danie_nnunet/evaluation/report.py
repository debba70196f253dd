"""Writing an evaluation: per-case CSV and JSON, summary JSON, a Markdown table laid out like the paper's table for
the dataset (the paper's DANIE-S/DANIE-L rows beside ours) and a PNG bar chart per class."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Dict, Optional, Sequence

from ..markdown import table_lines
from .benchmarks import Benchmark, Column
from .protocols import PER_CASE_METRICS

CSV_FIELDS = ("case", "class", "label") + PER_CASE_METRICS + ("TP", "FP", "FN", "TN", "n_ref", "n_pred")


def atomic_write(path: str, data) -> None:
    tmp = f"{path}.part"
    with open(tmp, "wb" if isinstance(data, bytes) else "w", newline="" if isinstance(data, str) else None) as f:
        f.write(data)
    os.replace(tmp, path)


def per_case_csv(records: Sequence[Dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


def to_json(data) -> str:
    """JSON as nnU-Net writes its summary.json: NaN and Infinity are written as such (Python's json reads them)."""
    return json.dumps(data, indent=2)


def _value(summary: Dict, column: Column) -> float:
    """Our number for a column of the paper's table; pooled counts only in the paper mode (the nnunet mode
    averages over cases, as nnU-Net does)."""
    source = summary["classes"][column.klass] if column.klass is not None else summary["mean"]
    source = source["pooled"] if column.pooled and summary["mode"] == "paper" else source
    return source[column.metric]


def _fmt(value: Optional[float], percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value * 100:.2f}" if percent else f"{value:.2f}"


def markdown(summary: Dict, benchmark: Optional[Benchmark]) -> str:
    mode, units = summary["mode"], summary["units"]
    lines = [f"# {summary['name']}: {benchmark.title if benchmark else 'segmentation'} ({mode} mode)", ""]
    lines.append(f"{summary['num_cases']} cases, {len(summary['classes'])} classes. " + MODE_TEXT[mode].format(**units)
                 + (f" Masks resized to {summary['resize']} x {summary['resize']} (nearest)." if summary["resize"]
                    else ""))
    lines.append("")
    if benchmark:
        lines.append(f"Laid out like the paper's {benchmark.table}." + (
            "" if mode == "paper" else " The paper's rows were computed under the paper protocol, ours under the "
                                       "nnunet mode: the numbers are not directly comparable."))
        lines.append("")
        header = ["Method"] + [c.header for c in benchmark.columns]
        rows = [[summary["name"]] + [_fmt(_value(summary, c), c.percent) for c in benchmark.columns]]
        rows += [[name] + [_fmt(v / 100 if c.percent else v, c.percent) for v, c in zip(values, benchmark.columns)]
                 for name, values in benchmark.paper_rows.items()]
        lines += table_lines(header, rows)
        if benchmark.note:
            lines += ["", benchmark.note]
        if mode != "paper" and any(c.pooled for c in benchmark.columns):
            lines += ["", "Our row (nnunet mode) averages over images instead of pooling all test pixels."]
        lines.append("")
    lines.append(f"All metrics per class ({summary['name']}; overlap in %, HD95/ASD in {units['HD95']}; "
                 "mean over cases):")
    lines.append("")
    header = ["class", "label"] + list(PER_CASE_METRICS) + ["cases", "missed", "spurious", "both empty"]
    rows = []
    for name, s in summary["classes"].items():
        rows.append([s["display"], str(s["label"])] + [_fmt(s[m], m not in ("HD95", "ASD")) for m in PER_CASE_METRICS]
                    + [str(s[k]) for k in ("n_cases", "n_missed", "n_spurious", "n_both_empty")])
    rows.append(["**mean**", ""] + [_fmt(summary["mean"][m], m not in ("HD95", "ASD")) for m in PER_CASE_METRICS]
                + ["", "", "", ""])
    lines += table_lines(header, rows)
    lines.append("")
    return "\n".join(lines)


MODE_TEXT = {
    "nnunet": "nnunet mode: each case in its own geometry, HD95/ASD in {HD95} from the voxel spacing; Dice/IoU "
              "NaN when reference and prediction are both empty (left out of means), HD95/ASD infinite when exactly "
              "one is empty (counted as missed/spurious, means over the finite cases).",
    "paper": "paper mode (TransUNet lineage): medpy-style definitions on the voxel grid, HD95/ASD in {HD95}; a "
             "missed organ scores Dice 0 and HD95 0, a prediction where the reference is empty Dice 1 and HD95 0; "
             "plain means over cases, then over classes.",
}


def bar_chart(summary: Dict, benchmark: Optional[Benchmark], path: str) -> None:
    """Grouped bars: per class (Dice, %) for multi-class datasets, per table metric for single-class ones; ours
    beside the paper's DANIE-S / DANIE-L where the paper has the number."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = [c for c in benchmark.columns if c.klass] if benchmark else []
    if benchmark and not per_class:  # single-class dataset: one group per metric of the table
        groups = [c.header.rstrip("↑↓") for c in benchmark.columns if c.percent]
        ours = [_value(summary, c) * 100 for c in benchmark.columns if c.percent]
        paper = {n: [v for v, c in zip(vals, benchmark.columns) if c.percent]
                 for n, vals in benchmark.paper_rows.items()}
        ylabel = "%"
    else:
        classes = list(summary["classes"])
        groups = [summary["classes"][k]["display"] for k in classes]
        ours = [summary["classes"][k]["Dice"] * 100 for k in classes]
        paper = {}
        if benchmark:
            index = {c.klass: i for i, c in enumerate(benchmark.columns) if c.klass and c.metric == "Dice"}
            paper = {n: [vals[index[k]] if k in index else math.nan for k in classes]
                     for n, vals in benchmark.paper_rows.items()}
        ylabel = "Dice (%)"
    series = [(summary["name"], ours)] + list(paper.items())
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.0))
    for i, (label, values) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(f"{benchmark.title if benchmark else 'per class'} ({summary['mode']} mode)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    tmp = f"{path}.part.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(out_dir: str, records: Sequence[Dict], summary: Dict,
                 benchmark: Optional[Benchmark]) -> Dict[str, str]:
    """Write every output of an evaluation into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (("csv", "per_case.csv"), ("json", "per_case.json"),
                                                       ("summary", "summary.json"), ("table", "table.md"),
                                                       ("chart", "chart_per_class.png"))}
    atomic_write(paths["csv"], per_case_csv(records))
    atomic_write(paths["json"], to_json(list(records)))
    atomic_write(paths["summary"], to_json(summary))
    atomic_write(paths["table"], markdown(summary, benchmark))
    bar_chart(summary, benchmark, paths["chart"])
    return paths
