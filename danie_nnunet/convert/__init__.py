"""Dataset converters: the paper's five benchmarks from their official downloads to nnU-Net raw datasets.

`danie-nnunet convert {synapse,acdc,isic2017,isic2018,glas} SOURCE... [--out NNUNET_RAW]`; one module per dataset,
shared checks in `validation`, all-or-nothing writing in `writer`, safe archive extraction in `archive`.
"""
from __future__ import annotations

import argparse

DATASETS = ("synapse", "acdc", "isic2017", "isic2018", "glas")
DESCRIPTION = """Convert an official dataset download (archives or extracted folders) into an nnU-Net raw dataset
with the paper's split (--split paper: splits_final.json, test cases in imagesTs/labelsTs) or for nnU-Net's 5-fold
cross-validation (--split cv5). The whole input is checked first and every problem is reported per file; nothing
is written unless all is well, and the dataset appears in nnUNet_raw in one step. Re-running the same conversion
does nothing; a different dataset with the same id is refused unless --overwrite. See docs/reproduce.md."""


def _common(p: argparse.ArgumentParser, default_id: str) -> None:
    p.add_argument("sources", nargs="+", help="the downloaded archive(s) or folder(s); archives are extracted safely")
    p.add_argument("--out", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--id", type=int, default=None, dest="dataset_id", help=f"dataset id (default: {default_id})")
    p.add_argument("--name", default=None, help="dataset name after DatasetXXX_ (default: see --id)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset that has the same id")
    p.add_argument("-np", "--num-processes", type=int, default=1, dest="num_processes",
                   help="worker processes for writing cases (default 1)")


def _split(p: argparse.ArgumentParser, paper: str) -> None:
    p.add_argument("--split", choices=("paper", "cv5"), default="paper",
                   help=f"paper: {paper}; cv5: nnU-Net 5-fold cross-validation")


def cmd_convert(args) -> int:
    kwargs = dict(out=args.out, dataset_id=args.dataset_id, name=args.name, overwrite=args.overwrite,
                  num_processes=args.num_processes)
    if args.dataset == "synapse":
        from .synapse import convert_synapse
        convert_synapse(args.sources, labels=args.labels, split=args.split, **kwargs)
    elif args.dataset == "acdc":
        from .acdc import convert_acdc
        convert_acdc(args.sources, split=args.split, **kwargs)
    elif args.dataset == "isic2017":
        from .isic2017 import convert_isic2017
        convert_isic2017(args.sources, split=args.split, **kwargs)
    elif args.dataset == "isic2018":
        from .isic2018 import convert_isic2018
        convert_isic2018(args.sources, split=args.split, **kwargs)
    else:
        from .glas import convert_glas
        convert_glas(args.sources, **kwargs)
    return 0


def register(subparsers) -> None:
    """Add `convert <dataset>` to the `danie-nnunet` command line."""
    p = subparsers.add_parser("convert", help="official dataset download -> nnU-Net raw dataset (paper splits)",
                              description=DESCRIPTION)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="{" + ",".join(DATASETS) + "}")

    q = sub.add_parser("synapse", help="Synapse/BTCV abdomen CT: RawData.zip or TransUNet's train_npz + test_vol_h5")
    _common(q, "701 Synapse, 702 SynapseCV, 703/704 with --labels 13, 705/706 for TransUNet's npz/h5")
    q.add_argument("--labels", choices=("8", "13"), default="8",
                   help="8: TransUNet's 8 organs, others set to background (default); 13: all BTCV organs")
    _split(q, "TransUNet's 18 train / 12 test as fold 0, test cases also in imagesTs")
    q.set_defaults(func=cmd_convert)

    q = sub.add_parser("acdc", help="ACDC cardiac cine-MRI: ACDC.zip or its training/ folder")
    _common(q, "711 ACDC, 712 ACDCCV")
    _split(q, "the lineage's 70/10/20 patients (fold 0 = 70/10, test in imagesTs); cv5 groups frames by patient")
    q.set_defaults(func=cmd_convert)

    q = sub.add_parser("isic2017", help="ISIC 2017 Part 1: the six official archives")
    _common(q, "721 ISIC2017, 722 ISIC2017CV")
    _split(q, "official 2000 train / 150 val as fold 0, 600 test in imagesTs")
    q.set_defaults(func=cmd_convert)

    q = sub.add_parser("isic2018", help="ISIC 2018 Task 1: training input + ground truth archives")
    _common(q, "723 ISIC2018, 724 ISIC2018CV")
    _split(q, "BCDU-Net's 1815 train / 259 val as fold 0, 520 test in imagesTs")
    q.set_defaults(func=cmd_convert)

    q = sub.add_parser("glas", help="GlaS (Warwick-QU) H&E glands: the official zip or folder")
    _common(q, "731 GlaS")
    q.set_defaults(func=cmd_convert)
