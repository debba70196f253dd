"""Visual comparison grid of several models' predictions (the paper's Figures 6 and 7)."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from danie_nnunet.compare import BOX_COLOUR, LEGEND_PX, CompareError, compare, disagreement_boxes, grid_size, register
from danie_nnunet.synthetic import LABELS, write_dataset
from danie_nnunet.visualize import PALETTE


def _write_like(array, reference_file, out_file):
    ref = sitk.ReadImage(reference_file)
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(ref)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    sitk.WriteImage(img, out_file)


@pytest.fixture
def dataset(tmp_path):
    """Two synthetic CT cases and three 'models': exact, without the spleen, shifted by 3 pixels."""
    paths = write_dataset(str(tmp_path / "raw"), 992, "Compare", num_train=0, num_test=2, shape=(4, 48, 40))
    preds = {}
    for name, change in (("exact", lambda a: a), ("noSpleen", lambda a: np.where(a == 2, 0, a)),
                         ("shifted", lambda a: np.roll(a, 3, axis=2))):
        preds[name] = str(tmp_path / name)
        for f in os.listdir(paths["labelsTs"]):
            label = os.path.join(paths["labelsTs"], f)
            _write_like(change(sitk.GetArrayFromImage(sitk.ReadImage(label))), label, os.path.join(preds[name], f))
    return paths, preds


def test_compare_grid_has_every_column_a_legend_and_boxes(dataset, tmp_path, capsys):
    paths, preds = dataset
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "figs" / "compare.png"
    args = parser.parse_args(["compare", "--images", paths["imagesTs"], "--labels", paths["labelsTs"], "--pred",
                              f"exact={preds['exact']}", f"DANIE={preds['noSpleen']}", "--cases", "case_000",
                              "case_001:1,2", "--boxes", "1", "--out", str(out)])
    assert args.func(args) == 0
    assert "3 slice(s) x [image, ground truth, exact, DANIE]" in capsys.readouterr().out
    png = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert (png.shape[1], png.shape[0]) == grid_size(3, 2)
    assert png.std() > 20  # not blank
    legend = png[-LEGEND_PX:]
    for c in range(1, len(LABELS)):  # one swatch per class in its fixed colour
        assert (np.abs(legend - PALETTE[c - 1]).sum(-1) == 0).sum() > 20, f"no legend swatch for class {c}"
    red = (np.abs(png[:-LEGEND_PX] - np.array(BOX_COLOUR) * 255).sum(-1) < 30).sum()
    assert red > 100  # the boxes are drawn
    assert sorted(os.listdir(out.parent)) == ["compare.png"]


def test_boxes_surround_where_the_models_differ(dataset, tmp_path):
    paths, preds = dataset
    info = compare(paths["imagesTs"], paths["labelsTs"], [preds["exact"], preds["noSpleen"]],
                   str(tmp_path / "boxes.png"), ["case_000"], boxes=2)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(paths["labelsTs"], "case_000.nii.gz")))
    s = info["rows"][0][1]
    ys, xs = np.nonzero(truth[s] == 2)  # the spleen is the only disagreement
    assert len(info["boxes"][0]) == 1
    y0, x0, y1, x1 = info["boxes"][0][0]
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
    assert (y1 - y0) * (x1 - x0) < truth[s].size / 4  # a box around the region, not the whole slice
    # one model: boxes where it differs from the ground truth
    shifted = np.roll(truth[s], 3, axis=1)
    assert disagreement_boxes(truth[s], [shifted], 3) and disagreement_boxes(truth[s], [truth[s]], 3) == []


def test_rgb_2d_images(tmp_path):
    """A natural-image dataset (ISIC, GlaS): one RGB PNG per case, 2D labels."""
    rng = np.random.default_rng(0)
    for folder in ("imagesTs", "labelsTs", "pred"):
        os.makedirs(tmp_path / folder)
    rgb = rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)
    label = np.zeros((40, 50), np.uint8)
    label[10:30, 10:30] = 1
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "imagesTs" / "isic_0000.png"))
    sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / "labelsTs" / "isic.png"))
    sitk.WriteImage(sitk.GetImageFromArray(label[::-1].copy()), str(tmp_path / "pred" / "isic.png"))
    with open(tmp_path / "dataset.json", "w") as f:
        json.dump({"labels": {"background": 0, "lesion": 1}, "file_ending": ".png",
                   "channel_names": {"0": "R", "1": "G", "2": "B"}}, f)
    info = compare(str(tmp_path / "imagesTs"), str(tmp_path / "labelsTs"), [f"model={tmp_path / 'pred'}"],
                   str(tmp_path / "rgb.png"), boxes=1)
    assert info["rows"] == [("isic", 0)] and info["size"] == grid_size(1, 1)
    png = np.asarray(Image.open(tmp_path / "rgb.png").convert("RGB")).astype(int)
    assert (png.shape[1], png.shape[0]) == grid_size(1, 1) and png.std() > 20


def test_bad_inputs_are_refused_clearly(dataset, tmp_path):
    paths, preds = dataset
    broken = tmp_path / "broken"
    shutil.copytree(preds["exact"], broken)
    img = sitk.GetImageFromArray(np.zeros((4, 20, 20), np.uint8))
    sitk.WriteImage(img, str(broken / "case_000.nii.gz"))
    out = str(tmp_path / "x.png")
    with pytest.raises(CompareError, match=r"has shape \(4, 20, 20\), the ground truth \(4, 48, 40\)"):
        compare(paths["imagesTs"], paths["labelsTs"], [f"broken={broken}"], out, ["case_000"])
    with pytest.raises(CompareError, match="slice 9 of case_000 out of range"):
        compare(paths["imagesTs"], paths["labelsTs"], [preds["exact"]], out, ["case_000:9"])
    with pytest.raises(CompareError, match="folder .*missing does not exist"):
        compare(paths["imagesTs"], paths["labelsTs"], [str(tmp_path / "missing")], out)
    assert not os.path.exists(out)
