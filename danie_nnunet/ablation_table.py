"""The paper's ablation Tables 5, 6 and 7 filled with our runs: Dice of each row's trainer beside the paper's.

Each row of the tables has an nnU-Net trainer (`trainers/ablations.py`, names in ABLATION_TRAINERS). This module
reads the results nnU-Net writes for them (nnUNet_results/DatasetXXX/<trainer>__<plans>__<config>/fold_X/
validation/summary.json), or test-set evaluations (<reports>/<trainer>/summary.json of nnUNetv2_evaluate_simple
or `danie-nnunet evaluate`), and prints the tables in the paper's layout with ours beside the paper's numbers,
plus each row's params and GMACs at 256x256 (3 channels, 9 classes: the paper's "GFLOPs" column is GMACs,
spec §6). It reads json files only and never imports nnU-Net.
"""
from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from .config import ABLATION_DESCRIPTIONS, get_config

ABLATION_TRAINERS = {
    "A.1": "DANIETrainer_A1_noHAP", "A.2": "DANIETrainer_A2_noSAP", "A.3": "DANIETrainer_A3_noSpatialAtt",
    "A.4": "DANIETrainer_A4_noChannelAtt", "A.5": "DANIETrainer_A5_DAE_Add",
    "B.1": "DANIETrainer_B1_SpatialChannel_noDcal", "B.2": "DANIETrainer_B2_SpatialChannel_Dcal",
    "B.3": "DANIETrainer_B3_ChannelSpatial_noDcal", "B.4": "DANIETrainer_B4_ChannelSpatial_Dcal",
    "C.1": "DANIETrainer_C1_ConcatRes", "C.2": "DANIETrainer_C2_Add", "C.3": "DANIETrainer_C3_EH_Add",
    "C.4": "DANIETrainer_C4_ES_Add", "C.5": "DANIETrainer_C5_JointPreservation",
}
TABLES = {
    "5": ("Table 5: Dual Attention Encoder (Synapse)", ("A.1", "A.2", "A.3", "A.4", "A.5")),
    "6": ("Table 6: Hierarchical-Attentional Perception (Synapse, ACDC)", ("B.1", "B.2", "B.3", "B.4")),
    "7": ("Table 7: Joint Preservation (Synapse)", ("C.1", "C.2", "C.3", "C.4", "C.5")),
}
# The paper's numbers: "GFLOPs" (= GMACs at 256x256), average Dice in % on Synapse and, for Table 6, ACDC
PAPER = {
    "A.1": {"gflops": 19.06, "synapse": 77.12}, "A.2": {"gflops": 10.98, "synapse": 74.06},
    "A.3": {"gflops": 22.13, "synapse": 81.18}, "A.4": {"gflops": 23.25, "synapse": 80.65},
    "A.5": {"gflops": 25.16, "synapse": 82.97},
    "B.1": {"synapse": 81.52, "acdc": 90.43}, "B.2": {"synapse": 82.22, "acdc": 90.79},
    "B.3": {"synapse": 82.10, "acdc": 90.83}, "B.4": {"synapse": 82.97, "acdc": 91.02},
    "C.1": {"gflops": 27.88, "synapse": 83.58}, "C.2": {"gflops": 25.16, "synapse": 82.97},
    "C.3": {"gflops": 26.53, "synapse": 84.56}, "C.4": {"gflops": 26.52, "synapse": 84.25},
    "C.5": {"gflops": 26.55, "synapse": 85.47},
}
FULL_MODEL_TRAINER = "DANIETrainer"  # DANIE-L: the same network as every row whose configuration is the default


class AblationTableError(ValueError):
    """Results that cannot be collected, with what to do about it."""


@dataclass
class RowResult:
    dice: float  # mean foreground Dice in %, averaged over the summaries found
    spread: float  # standard deviation over folds (0 with one summary)
    summaries: List[str]
    source: str  # the trainer (or file) the numbers come from


def mean_foreground_dice(summary_file: str) -> float:
    """Mean foreground Dice (0-1) of a summary.json: nnU-Net's (validation, nnUNetv2_evaluate_simple) or the
    one `danie-nnunet evaluate` writes (its 'mean' Dice, e.g. under the paper protocol).

    nnU-Net's 'foreground_mean' is NaN when one class is empty in every case; then the mean over the classes
    that have a Dice is used.
    """
    try:
        with open(summary_file) as f:
            summary = json.load(f)
        if "foreground_mean" not in summary and isinstance(summary["mean"].get("Dice"), (int, float)):
            return float(summary["mean"]["Dice"])  # danie-nnunet evaluate
        value = summary["foreground_mean"]["Dice"]
        if value is None or not math.isfinite(value):
            per_class = [m["Dice"] for m in summary["mean"].values()
                         if m.get("Dice") is not None and math.isfinite(m["Dice"])]
            value = sum(per_class) / len(per_class) if per_class else float("nan")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AblationTableError(f"{summary_file} is not a summary.json of nnU-Net or `danie-nnunet evaluate` "
                                 f"with a mean Dice ({type(e).__name__}: {e})") from None
    return float(value)


def dataset_folder(results_root: Optional[str], dataset: Optional[str]) -> str:
    """nnUNet_results/DatasetXXX_Name for a dataset id ('27') or name ('Dataset027_ACDC')."""
    if not dataset:
        raise AblationTableError("give the dataset (--dataset ID or name), or --reports with test-set summaries")
    if not results_root or not os.path.isdir(results_root):
        raise AblationTableError(f"results folder {results_root!r} does not exist (set nnUNet_results or --results)")
    if dataset.isdigit():
        hits = sorted(glob.glob(os.path.join(results_root, f"Dataset{int(dataset):03d}_*")))
    else:
        hits = [os.path.join(results_root, dataset)] if os.path.isdir(os.path.join(results_root, dataset)) else []
    if not hits:
        found = sorted(d for d in os.listdir(results_root) if d.startswith("Dataset"))
        raise AblationTableError(f"no results of dataset {dataset!r} in {results_root} (found: {found or 'none'})")
    return hits[0]


def equivalent_trainers(row: str) -> List[str]:
    """Trainers of the other rows (and DANIETrainer) that train exactly the same network as `row`."""
    def key(variant):
        return replace(get_config(variant), name="")
    same = [ABLATION_TRAINERS[r] for r in ABLATION_TRAINERS if r != row and key(r) == key(row)]
    return same + ([FULL_MODEL_TRAINER] if key(row) == key("L") else [])


def fold_summaries(trainer_folder: str, folds: Optional[Sequence[str]] = None) -> List[str]:
    pattern = os.path.join(trainer_folder, "fold_*", "validation", "summary.json")
    found = sorted(glob.glob(pattern))
    if folds is not None:
        wanted = {f"fold_{f}" for f in folds}
        found = [p for p in found if os.path.basename(os.path.dirname(os.path.dirname(p))) in wanted]
    return found


def _result(summaries: List[str], source: str) -> RowResult:
    values = [100 * mean_foreground_dice(s) for s in summaries]
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if len(values) > 1 else 0.0
    return RowResult(mean, spread, summaries, source)


def collect_results(results_root: Optional[str], dataset: Optional[str], plans: str = "nnUNetPlans",
                    configuration: str = "2d", folds: Optional[Sequence[str]] = None,
                    summaries: Optional[Dict[str, str]] = None,
                    reports_dir: Optional[str] = None) -> Dict[str, RowResult]:
    """Row -> result, for the rows with results.

    By default each row's cross-validation summaries fold_X/validation/summary.json are read from the results
    folder. With `reports_dir`, <reports_dir>/<trainer>/summary.json is read instead (test-set evaluations, e.g.
    `danie-nnunet evaluate ... -o <reports_dir>/<trainer>`). `summaries` (row -> summary.json) overrides both.
    A row without results takes those of a trainer of the same network (A.5 = B.4 = C.2; C.5 = DANIETrainer).
    """
    summaries = dict(summaries or {})
    unknown = sorted(set(summaries) - set(ABLATION_TRAINERS))
    if unknown:
        raise AblationTableError(f"unknown ablation rows {unknown}; rows are {sorted(ABLATION_TRAINERS)}")
    if reports_dir is not None and not os.path.isdir(reports_dir):
        raise AblationTableError(f"reports folder {reports_dir!r} does not exist")
    folder = dataset_folder(results_root, dataset) if reports_dir is None else None

    def runs(trainer: str) -> List[str]:
        if reports_dir is not None:
            report = os.path.join(reports_dir, trainer, "summary.json")
            return [report] if os.path.isfile(report) else []
        return fold_summaries(os.path.join(folder, f"{trainer}__{plans}__{configuration}"), folds)

    results = {}
    for row, trainer in ABLATION_TRAINERS.items():
        if row in summaries:
            if not os.path.isfile(summaries[row]):
                raise AblationTableError(f"summary file {summaries[row]} of row {row} does not exist")
            results[row] = _result([summaries[row]], os.path.basename(summaries[row]))
        elif runs(trainer):
            results[row] = _result(runs(trainer), trainer)
        else:
            twin = next((t for t in equivalent_trainers(row) if runs(t)), None)
            if twin:
                results[row] = _result(runs(twin), twin)
    return results


def row_costs(rows: Sequence[str] = tuple(ABLATION_TRAINERS), img_size=(256, 256), in_chans: int = 3,
              num_classes: int = 9) -> Dict[str, Tuple[float, float]]:
    """Row -> (params in M, GMACs) with torch's FLOP counter on the meta device (about a second per row)."""
    from .cost import count_cost
    out = {}
    for row in rows:
        cost = count_cost(row, img_size, in_chans, num_classes)
        out[row] = (cost.params / 1e6, cost.gmacs)
    return out


def _num(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_tables(results: Dict[str, RowResult], costs: Optional[Dict[str, Tuple[float, float]]] = None,
                  tables: Sequence[str] = tuple(TABLES), dataset: str = "") -> str:
    """Markdown: one table per paper table, ours beside the paper's numbers."""
    costs = costs or {}
    out = []
    for t in tables:
        if t not in TABLES:
            raise AblationTableError(f"unknown table {t!r}; tables are {sorted(TABLES)}")
        title, rows = TABLES[t]
        acdc = any("acdc" in PAPER[r] for r in rows)
        head = ["row", "description", "trainer", "params (M)", "GMACs 256² (ours)", "GFLOPs (paper)",
                f"Dice % (ours{', ' + dataset if dataset else ''})", "runs", "Dice % (paper, Synapse)"]
        if acdc:
            head.append("Dice % (paper, ACDC)")
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            res, paper = results.get(row), PAPER[row]
            params, gmacs = costs.get(row, (None, None))
            if res is None:
                ours, runs = "—", "not trained"
            else:
                ours = _num(res.dice) + (f" ± {res.spread:.2f}" if len(res.summaries) > 1 else "")
                runs = f"{len(res.summaries)}" + ("" if res.source == ABLATION_TRAINERS[row] else f" ({res.source})")
            cells = [row, ABLATION_DESCRIPTIONS[row], f"`{ABLATION_TRAINERS[row]}`", _num(params), _num(gmacs),
                     _num(paper.get("gflops")), ours, runs, _num(paper.get("synapse"))]
            if acdc:
                cells.append(_num(paper.get("acdc")))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    notes = ("Ours: mean foreground Dice of nnU-Net's summary.json (± std over folds); 'runs' counts the summaries "
             "and names another trainer of the same network when its runs stand in. GMACs: torch's FLOP counter / 2 "
             "at 3 x 256 x 256, 9 classes, including the attention matmuls the authors' counter left out.")
    return "\n\n".join(out) + "\n\n" + notes + "\n"


def _write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------------------------------- CLI
def _parse_summaries(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items or ():
        row, sep, path = item.partition("=")
        if not sep:
            raise AblationTableError(f"--summary takes ROW=PATH (e.g. C.5=summary.json), got {item!r}")
        out[row] = path
    return out


def cmd_ablation_table(args) -> int:
    results_root = args.results or os.environ.get("nnUNet_results")
    results = collect_results(results_root, args.dataset, args.plans, args.configuration, args.folds,
                              _parse_summaries(args.summary), args.reports)
    where = args.reports or f"{results_root} (dataset {args.dataset})"
    if not results:
        raise AblationTableError(f"no ablation results in {where}: train the rows first (docs/ablations.md), or "
                                 f"give --summary ROW=summary.json")
    costs = None if args.no_cost else row_costs()
    label = args.label or (os.path.basename(dataset_folder(results_root, args.dataset)) if not args.reports
                           else os.path.basename(os.path.normpath(args.reports)))
    text = format_tables(results, costs, args.tables, label)
    print(text)
    if args.out:
        _write_atomically(args.out, text)
        print(f"wrote {args.out}")
    if args.json:
        payload = {row: {"trainer": ABLATION_TRAINERS[row], "paper": PAPER[row],
                         "ours": None if row not in results else
                         {"dice": results[row].dice, "std": results[row].spread, "source": results[row].source,
                          "summaries": results[row].summaries},
                         "params_m": costs[row][0] if costs else None, "gmacs_256": costs[row][1] if costs else None}
                   for row in ABLATION_TRAINERS}
        _write_atomically(args.json, json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("ablation-table", help="collect the ablation runs into the paper's Tables 5-7",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None, help="dataset id or name (e.g. 701 or Dataset701_Synapse)")
    p.add_argument("--results", default=None, help="nnU-Net results folder (default: $nnUNet_results)")
    p.add_argument("--reports", default=None,
                   help="read <REPORTS>/<trainer>/summary.json (test-set evaluations) instead of the results folder")
    p.add_argument("--label", default=None, help="what to call our column (default: the dataset or reports folder)")
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--folds", nargs="+", default=None, help="folds to average (default: every fold found)")
    p.add_argument("--summary", nargs="+", default=None, metavar="ROW=PATH",
                   help="use this summary.json for a row (e.g. a test-set nnUNetv2_evaluate_simple output)")
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    p.add_argument("--no-cost", action="store_true", help="skip the params/GMACs columns (about 15 s on a CPU)")
    p.add_argument("--out", default=None, help="write the markdown tables here too")
    p.add_argument("--json", default=None, help="write every row (paper, ours, cost) as JSON here")
    p.set_defaults(func=cmd_ablation_table)
