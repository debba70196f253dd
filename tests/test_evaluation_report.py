"""`evaluate` end to end on small folders: both modes, the outputs (CSV, JSON, the paper's table, PNG chart),
class resolution by name, the ISIC lineage's pooled metrics, clear errors; the paper's numbers as transcribed."""
import argparse
import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from danie_nnunet.convert.synapse import BTCV_LABELS, SYNAPSE8_LABELS
from danie_nnunet.evaluation import metrics as M
from danie_nnunet.evaluation import register
from danie_nnunet.evaluation.benchmarks import BENCHMARKS
from danie_nnunet.evaluation.evaluate import evaluate

SPACING_XYZ = (0.7, 0.7, 4.0)


def evaluate_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate"] + argv)
    return args.func(args)


def write_nii(array, path):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, path)


def box(value, z, y, x, shape=(6, 32, 32)):
    a = np.zeros(shape, np.uint8)
    a[z, y, x] = value
    return a


@pytest.fixture
def synapse_folders(tmp_path):
    """labelsTs of 3 cases with 3 organs each (aorta 1, gallbladder 2, liver 5), next to an 8-organ dataset.json;
    predictions: case A perfect, case B misses the gallbladder, case C has the liver shifted by 2 voxels in x."""
    ds = tmp_path / "Dataset701_Synapse"
    ref, pred = ds / "labelsTs", tmp_path / "pred"
    ref.mkdir(parents=True)
    pred.mkdir()
    json.dump({"labels": SYNAPSE8_LABELS, "file_ending": ".nii.gz", "danie_benchmark": "synapse",
               "channel_names": {"0": "CT"}, "numTraining": 0}, open(ds / "dataset.json", "w"))
    organs = box(1, slice(0, 6), slice(2, 6), slice(2, 6)) + box(2, slice(1, 3), slice(10, 14), slice(10, 14)) \
        + box(5, slice(2, 5), slice(18, 28), slice(4, 20))
    shifted = organs.copy()
    shifted[shifted == 5] = 0
    shifted += box(5, slice(2, 5), slice(18, 28), slice(6, 22))
    for case, prediction in (("caseA", organs), ("caseB", np.where(organs == 2, 0, organs)), ("caseC", shifted)):
        write_nii(organs, ref / f"{case}.nii.gz")
        write_nii(prediction, pred / f"{case}.nii.gz")
    return ref, pred, organs, shifted


def test_both_modes_on_synapse_volumes(synapse_folders, tmp_path):
    ref, pred, organs, shifted = synapse_folders
    for mode in ("paper", "nnunet"):
        assert evaluate_cli([str(ref), str(pred), "-o", str(tmp_path / mode), "--mode", mode, "--name", "ours"]) == 0
    paper = json.load(open(tmp_path / "paper" / "summary.json"))
    honest = json.load(open(tmp_path / "nnunet" / "summary.json"))
    assert paper["dataset"] == "synapse" and list(paper["classes"]) == list(SYNAPSE8_LABELS)[1:]
    # gallbladder: paper averages 1, 0 (missed), 1; kidney (absent from all cases) scores 0 in paper, NaN in nnunet
    assert paper["classes"]["gallbladder"]["Dice"] == pytest.approx(2 / 3)
    assert paper["classes"]["kidney_left"]["Dice"] == 0.0 and math.isnan(honest["classes"]["kidney_left"]["Dice"])
    assert honest["classes"]["gallbladder"]["n_missed"] == 1 and honest["classes"]["kidney_left"]["n_both_empty"] == 3
    liver_c = M.confusion(organs == 5, shifted == 5)
    assert paper["classes"]["liver"]["Dice"] == pytest.approx((2 + M.dice(liver_c)) / 3)
    d_vox = M.surface_distances(shifted == 5, organs == 5)
    d_mm = M.surface_distances(shifted == 5, organs == 5, tuple(reversed(SPACING_XYZ)))
    assert paper["classes"]["liver"]["HD95"] == pytest.approx(M.hd95(*d_vox) / 3)  # voxels, 0 for cases A and B
    assert honest["classes"]["liver"]["HD95"] == pytest.approx(M.hd95(*d_mm) / 3)  # mm
    assert paper["units"]["HD95"] == "voxels" and honest["units"]["HD95"] == "mm"
    assert paper["mean"]["Dice"] == pytest.approx(np.mean([c["Dice"] for c in paper["classes"].values()]))

    rows = list(csv.DictReader(open(tmp_path / "paper" / "per_case.csv")))
    assert len(rows) == 3 * 8 and rows[0]["case"] == "caseA" and rows[0]["class"] == "aorta"
    assert len(json.load(open(tmp_path / "paper" / "per_case.json"))) == 24
    table = open(tmp_path / "paper" / "table.md").read()
    assert "| Method | DICE↑ | mIoU↑ | ASD↓ | Aorta | Gallbladder | Kidney(L) | Kidney(R) | Liver | Pancreas | " \
           "Spleen | Stomach |" in table
    assert f"| ours | {100 * paper['mean']['Dice']:.2f} |" in table
    assert "| DANIE-S (paper) | 84.21 | 75.42 | 3.65 | 87.31 |" in table and "| DANIE-L (paper) | 85.47 |" in table
    assert "not directly comparable" in open(tmp_path / "nnunet" / "table.md").read()
    with Image.open(tmp_path / "paper" / "chart_per_class.png") as chart:
        assert chart.format == "PNG" and chart.width > 300


def test_13_label_dataset_is_scored_on_the_8_organs_by_name(synapse_folders, tmp_path):
    ref, pred, _, _ = synapse_folders
    json.dump({"labels": BTCV_LABELS, "file_ending": ".nii.gz"}, open(tmp_path / "btcv.json", "w"))
    summary = evaluate(str(ref), str(pred), str(tmp_path / "out"), mode="paper", dataset="synapse",
                       dataset_json=str(tmp_path / "btcv.json"))
    assert [(k, c["label"]) for k, c in summary["classes"].items()] == [
        ("aorta", 8), ("gallbladder", 4), ("kidney_left", 3), ("kidney_right", 2), ("liver", 6), ("pancreas", 11),
        ("spleen", 1), ("stomach", 7)]
    only = evaluate(str(ref), str(pred), str(tmp_path / "out2"), labels=[5])  # explicit labels, no table
    assert list(only["classes"]) == ["liver"] and only["dataset"] == "synapse"


def test_isic_paper_mode_pools_pixels_of_all_images(tmp_path):
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    big_ref, big_pred = np.zeros((224, 224), np.uint8), np.zeros((224, 224), np.uint8)
    big_ref[20:200, 20:200], big_pred[20:200, 30:200] = 1, 1
    small_ref, small_pred = np.zeros((224, 224), np.uint8), np.zeros((224, 224), np.uint8)
    small_ref[100:110, 100:110], small_pred[100:110, 105:115] = 1, 1
    for case, r, p in (("ISIC_0000001", big_ref, big_pred), ("ISIC_0000002", small_ref, small_pred)):
        Image.fromarray(r).save(ref / f"{case}.png")
        Image.fromarray(p).save(pred / f"{case}.png")
    summary = evaluate(str(ref), str(pred), str(tmp_path / "out"), mode="paper", dataset="isic2017")
    pooled = M.confusion(np.stack([big_ref, small_ref]), np.stack([big_pred, small_pred]))
    per_image = [M.dice(M.confusion(big_ref, big_pred)), M.dice(M.confusion(small_ref, small_pred))]
    assert summary["resize"] == 224 and summary["units"]["HD95"] == "pixels"
    assert summary["mean"]["pooled"]["Dice"] == pytest.approx(M.dice(pooled))
    assert summary["mean"]["Dice"] == pytest.approx(np.mean(per_image)) != pytest.approx(M.dice(pooled))
    table = open(tmp_path / "out" / "table.md").read()
    assert "| Method | DICE↑ | SE↑ | SP↑ | ACC↑ |" in table
    assert "| DANIE-L (paper) | 94.25 | 94.10 | 98.61 | 97.72 |" in table
    assert f"| out | {100 * M.dice(pooled):.2f} | {100 * M.sensitivity(pooled):.2f} |" not in table  # name = pred dir
    assert f"| pred | {100 * M.dice(pooled):.2f} | {100 * M.sensitivity(pooled):.2f} |" in table


def test_clear_errors(synapse_folders, tmp_path):
    ref, pred, _, _ = synapse_folders
    os.remove(pred / "caseB.nii.gz")
    with pytest.raises(ValueError, match=r"1 of 3 references have no prediction in .*: caseB.nii.gz"):
        evaluate(str(ref), str(pred), str(tmp_path / "out"))
    write_nii(np.zeros((6, 32, 30), np.uint8), pred / "caseB.nii.gz")
    with pytest.raises(ValueError, match=r"caseB: prediction shape \(6, 32, 30\) differs from the reference"):
        evaluate(str(ref), str(pred), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate(str(ref), str(pred), str(tmp_path / "out"), mode="medpy")
    assert not os.path.exists(tmp_path / "out" / "summary.json")


def test_cli_modes_match_the_protocols():
    import danie_nnunet.evaluation as evaluation
    from danie_nnunet.evaluation.protocols import MODES
    assert evaluation.MODES == MODES


def test_paper_numbers_are_consistent():
    """The transcribed per-class Dice average to the tables' mean column (Tables 1 and 2)."""
    for key, tolerance in (("synapse", 0.006), ("acdc", 0.015)):
        bench = BENCHMARKS[key]
        per_class = [i for i, c in enumerate(bench.columns) if c.klass]
        for values in bench.paper_rows.values():
            assert np.mean([values[i] for i in per_class]) == pytest.approx(values[0], abs=tolerance)
    assert all(len(v) == len(b.columns) for b in BENCHMARKS.values() for v in b.paper_rows.values())
