"""The reproduction path on a tiny Synapse download, as docs/reproduce.md runs it: `danie-nnunet convert synapse`
(RawData/Training layout, 13 BTCV labels -> 8 organs, TransUNet's 18/12 split) -> stock nnUNetv2_plan_and_preprocess
-> nnUNetv2_train with a DANIE trainer (a few iterations) -> nnUNetv2_predict on imagesTs -> `danie-nnunet evaluate`
in both modes; our nnunet-mode Dice is checked against nnU-Net's own evaluation of the same predictions."""
import argparse
import csv
import json
import math
import os

import pytest

from danie_nnunet.convert import register as register_convert
from danie_nnunet.convert.synapse import SYNAPSE8_LABELS, TRANSUNET_TEST_IDS, TRANSUNET_TRAIN_IDS
from danie_nnunet.demo import nnunet_env
from danie_nnunet.evaluation import register as register_evaluate
from nnunet_helpers import TEST_EXT, TRAINER, nnunet
from test_convert_synapse import write_btcv_fixture

pytestmark = pytest.mark.e2e
DATASET, DATASET_NAME = "701", "Dataset701_Synapse"


def danie_nnunet(argv):
    """Our subcommands as the console script will run them once cli.py registers them."""
    parser = argparse.ArgumentParser(prog="danie-nnunet")
    sub = parser.add_subparsers(dest="command", required=True)
    register_convert(sub)
    register_evaluate(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_download_to_paper_table(tmp_path):
    env = nnunet_env(str(tmp_path), extra_ext=TEST_EXT)
    env["nnUNet_def_n_proc"] = "1"
    download = write_btcv_fixture(str(tmp_path / "download"), shape=(2, 32, 32))
    assert danie_nnunet(["convert", "synapse", download, "--out", env["nnUNet_raw"]]) == 0
    raw = os.path.join(env["nnUNet_raw"], DATASET_NAME)

    nnunet(["nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "2d", "-np", "1", "-npfp", "1"], env)
    splits = json.load(open(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "splits_final.json")))
    assert splits == json.load(open(os.path.join(raw, "splits_final.json")))  # nnU-Net took the paper split

    train = nnunet(["nnUNetv2_train", DATASET, "2d", "0", "-tr", TRAINER, "-device", "cpu"], env, nnUNet_n_proc_DA="0")
    assert "Using splits from existing split file" in train.stdout
    results = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    validation = os.path.join(results, "validation")
    assert sorted(f[:-7] for f in os.listdir(validation) if f.endswith(".nii.gz")) == \
        [f"case{n:04d}" for n in sorted(TRANSUNET_TEST_IDS)]  # fold 0 validates on TransUNet's 12 test cases

    predictions = str(tmp_path / "predictions")
    nnunet(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", DATASET, "-c", "2d",
            "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_tta"], env)
    for mode in ("paper", "nnunet"):
        assert danie_nnunet(["evaluate", os.path.join(raw, "labelsTs"), predictions, "-o", str(tmp_path / mode),
                             "--mode", mode, "--name", "DANIE-S (ours, test trainer)"]) == 0
        summary = json.load(open(tmp_path / mode / "summary.json"))
        assert summary["dataset"] == "synapse" and summary["num_cases"] == 12
        assert list(summary["classes"]) == list(SYNAPSE8_LABELS)[1:]
        assert 0.0 <= summary["mean"]["Dice"] <= 1.0
        rows = list(csv.DictReader(open(tmp_path / mode / "per_case.csv")))
        assert len(rows) == 12 * 8
        table = open(tmp_path / mode / "table.md").read()
        assert "| DANIE-S (ours, test trainer) |" in table and "| DANIE-L (paper) | 85.47 |" in table
        assert os.path.getsize(tmp_path / mode / "chart_per_class.png") > 1000

    # an independent check of the nnunet mode: nnU-Net's own evaluation of fold 0's validation predictions
    gt = os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "gt_segmentations")
    ours = str(tmp_path / "validation_eval")
    danie_nnunet(["evaluate", gt, validation, "-o", ours, "--mode", "nnunet", "--chill"])
    theirs = json.load(open(os.path.join(validation, "summary.json")))["metric_per_case"]
    mine = {(r["case"], int(r["label"])): r for r in json.load(open(os.path.join(ours, "per_case.json")))}
    compared = 0
    for case in theirs:
        name = os.path.basename(case["reference_file"])[: -len(".nii.gz")]
        for label, metrics in case["metrics"].items():
            for key in ("Dice", "IoU"):
                a, b = metrics[key], mine[(name, int(label))][key]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b), (name, label, key)
                compared += 1
    assert compared == 12 * 8 * 2
    assert len(TRANSUNET_TRAIN_IDS) == 18
