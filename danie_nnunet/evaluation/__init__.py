"""Evaluation of segmentations in two named modes, `nnunet` (honest: geometry, mm, explicit empty cases) and
`paper` (the TransUNet lineage's conventions, comparable with the paper's Tables 1-4); see `protocols`.

`danie-nnunet evaluate REFERENCES PREDICTIONS -o OUT [--mode nnunet|paper] [--dataset synapse|...]` writes
per_case.csv/json, summary.json, table.md (the paper's table layout, DANIE-S/L rows beside ours) and
chart_per_class.png. Modules: `metrics` (one structure), `protocols` (the two modes), `benchmarks` (the paper's
tables), `cases` (reading and pairing files), `report` (outputs), `evaluate` (the whole run).
"""
from __future__ import annotations

MODES = ("nnunet", "paper")  # protocols.MODES, repeated so that building the CLI does not import scipy

DESCRIPTION = """Score predictions against references (same file names): Dice, IoU, HD95, ASD, sensitivity,
specificity, accuracy per case and class, and their means. --mode nnunet: each case in its own geometry, distances
in mm, NaN when reference and prediction are both empty, inf when one is; --mode paper: the TransUNet lineage's
conventions (voxel units, a missed organ scores 0, ISIC pooled over pixels), comparable with the paper's tables.
Writes per_case.csv/json, summary.json, table.md (the paper's table layout, its DANIE-S/L rows beside ours) and
chart_per_class.png. See docs/reproduce.md."""


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate
    evaluate(args.references, args.predictions, args.out, mode=args.mode, dataset=args.dataset, labels=args.labels,
             dataset_json=args.dataset_json, name=args.name, resize=args.resize, file_ending=args.file_ending,
             num_processes=args.num_processes, chill=args.chill)
    return 0


def register(subparsers) -> None:
    """Add `evaluate` to the `danie-nnunet` command line."""
    from .benchmarks import BENCHMARKS
    p = subparsers.add_parser("evaluate", help="Dice, IoU, HD95, ASD, SE, SP, ACC per case and class; the paper's "
                                               "table layout", description=DESCRIPTION)
    p.add_argument("references", help="folder of reference segmentations (e.g. the raw dataset's labelsTs)")
    p.add_argument("predictions", help="folder of predictions with the same file names (nnUNetv2_predict -o)")
    p.add_argument("-o", "--out", required=True, help="output folder for the report")
    p.add_argument("--mode", choices=MODES, default="nnunet",
                   help="nnunet: geometry and mm, explicit empty cases (default); paper: TransUNet-lineage "
                        "conventions, comparable with the paper's tables")
    p.add_argument("--dataset", choices=sorted(BENCHMARKS), default=None,
                   help="the paper's table to lay out (default: dataset.json's danie_benchmark, if any)")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="label values to score (default: from the "
                                                                       "dataset / dataset.json)")
    p.add_argument("--dataset-json", default=None, help="default: next to the references or in the predictions")
    p.add_argument("--name", default=None, help="our row's name in the table (default: the predictions folder)")
    p.add_argument("--resize", type=int, default=None,
                   help="2D: resize masks to N x N (nearest) first; paper mode default 224 for ISIC/GlaS, 0 = off")
    p.add_argument("--file-ending", default=None, help="e.g. .nii.gz or .png (default: dataset.json's)")
    p.add_argument("--chill", action="store_true", help="score only the references that have a prediction "
                                                        "(e.g. a fold's validation folder against gt_segmentations)")
    p.add_argument("-np", "--num-processes", type=int, default=1, dest="num_processes")
    p.set_defaults(func=cmd_evaluate)
