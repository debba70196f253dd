"""Grad-CAM at DANIE's attention outputs (the paper's Figure 1), on the CPU."""
import argparse
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from danie_nnunet import create_danie
from danie_nnunet.cam import TAPS, figure_size, grad_cam, register
from danie_nnunet.trained_model import TrainedModelError


def test_grad_cam_maps_at_every_attention_output():
    torch.manual_seed(0)
    net = create_danie("S", (64, 64), 1, 3, deep_supervision=True).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 1, 64, 64)
    for level in (1, 3):
        result = grad_cam(net, x, class_index=1, level=level)
        assert list(result.maps) == list(TAPS) and result.absent == []
        for name, cam in result.maps.items():
            assert cam.shape == (64, 64) and np.isfinite(cam).all(), name
            assert cam.min() >= 0 and cam.max() <= 1 + 1e-6, name
        assert sum(cam.max() == pytest.approx(1.0) for cam in result.maps.values()) >= 4  # not all-zero maps
        assert result.prediction.shape == (64, 64)
    # the maps differ between the taps: they are not one map drawn five times
    maps = list(result.maps.values())
    assert any(not np.allclose(maps[0], m, atol=1e-3) for m in maps[1:])
    # the network is left as it was: mode, deep supervision, weights, no hooks
    assert net.training and net.deep_supervision
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert not any(m._forward_hooks for m in net.modules())


def test_taps_missing_from_an_ablation_row_are_left_out():
    x = torch.randn(1, 1, 64, 64)
    no_hap = grad_cam(create_danie("S/A.1", (64, 64), 1, 2), x, 1, level=2)
    assert no_hap.absent == ["L-spa", "L-cha", "G-cha"] and list(no_hap.maps) == ["G-spa", "JP"]  # no HAP, no ES
    no_spatial = grad_cam(create_danie("S/A.3", (64, 64), 1, 2), x, 1, level=2)
    assert "L-spa" in no_spatial.absent and "L-cha" in no_spatial.maps
    with pytest.raises(TrainedModelError, match="level must be 1-4"):
        grad_cam(create_danie("S/A.2", (64, 64), 1, 2), x, 1, level=5)


@pytest.mark.e2e
def test_cam_command_writes_the_figure(trained, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    image = os.path.join(trained["paths"]["imagesTs"], "case_006_0000.nii.gz")
    label = os.path.join(trained["paths"]["labelsTs"], "case_006.nii.gz")
    out = tmp_path / "figs" / "cam_liver.png"
    args = parser.parse_args(["cam", trained["results"], "--image", image, "--label", label, "--class", "liver",
                              "--level", "2", "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "Grad-CAM of 'liver' at L-spa, L-cha, G-spa, G-cha, JP" in printed
    # a map that is zero after Grad-CAM's ReLU (possible in a barely trained model) is named, not hidden
    named = re.search(r"no positive evidence \(.*\): (.*)", printed)
    empty = named.group(1).split(", ") if named else []
    assert len(empty) < len(TAPS)
    png = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert (png.shape[1], png.shape[0]) == figure_size(len(TAPS))
    assert png.std() > 20  # not blank
    # each map panel carries the jet overlay: strongly coloured pixels, unlike the grey image panel
    width = png.shape[1] // (len(TAPS) + 1)
    saturation = png.max(-1) - png.min(-1)
    assert (saturation[:, :width] > 40).mean() < 0.05  # grey, apart from the class outline
    for k, tap in enumerate(TAPS, start=1):
        if tap not in empty:
            assert (saturation[:, k * width:(k + 1) * width] > 40).mean() > 0.3, f"panel {tap} has no overlay"
    assert sorted(os.listdir(out.parent)) == ["cam_liver.png"]  # no temporary files left

    for cls, message in (("heart", "unknown class 'heart'; the classes are 0=background, 1=liver"),
                         ("0", "class 0 is the background")):
        args = parser.parse_args(["cam", trained["results"], "--image", image, "--class", cls, "--out", str(out)])
        with pytest.raises(TrainedModelError, match=message):
            args.func(args)
