"""Export of a trained DANIE fold to ONNX and TorchScript; the exported models match PyTorch; the documented
sliding-window example runs."""
import argparse
import json
import os
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from danie_nnunet import create_danie
from danie_nnunet.export import export_fold, load_sidecar, onnx_runner, register, torchscript_runner
from danie_nnunet.trained_model import (Preprocessing, TrainedFold, TrainedModelError, load_trained_fold, read_image,
                                        segment_volume, torch_runner)

pytestmark = pytest.mark.e2e
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "export.md")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The tiny trained fold exported to both formats through the `export` subcommand."""
    out = tmp_path_factory.mktemp("exported")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", trained["results"], "--fold", "0", "--format", "onnx", "torchscript",
                              "--out", str(out)])
    assert args.func(args) == 0
    return out


def test_exported_models_match_pytorch(trained, exported):
    assert sorted(os.listdir(exported)) == ["DANIETrainerTest_fold0.json", "DANIETrainerTest_fold0.onnx",
                                            "DANIETrainerTest_fold0.torchscript.pt"]  # no temporary leftovers
    sidecar = load_sidecar(str(exported / "DANIETrainerTest_fold0.json"))
    plans = json.load(open(os.path.join(trained["results"], "plans.json")))
    assert sidecar["input"]["patch_size"] == plans["configurations"]["2d"]["patch_size"] == [64, 64]
    assert sidecar["output"]["num_classes"] == 6 and sidecar["labels"]["aorta"] == 5
    ct = plans["foreground_intensity_properties_per_channel"]["0"]
    norm = sidecar["preprocessing"]["normalization"][0]
    assert norm["scheme"] == "CTNormalization" and norm["clip"] == [ct["percentile_00_5"], ct["percentile_99_5"]]
    assert sidecar["danie_config"]["name"] == "S" and sidecar["onnx_opset"] >= 17
    assert all(p["max_relative_difference"] <= 1e-4 for p in sidecar["parity"].values())

    network = load_trained_fold(trained["results"]).network
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))  # another batch size than exported
    with torch.no_grad():
        reference = network(x).numpy()
    for run in (onnx_runner(str(exported / "DANIETrainerTest_fold0.onnx")),
                torchscript_runner(str(exported / "DANIETrainerTest_fold0.torchscript.pt"))):
        out = run(x.numpy())
        assert out.shape == reference.shape == (3, 6, 64, 64)
        np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(reference).max()))


def test_sliding_window_with_the_exported_model_equals_pytorch(trained, exported):
    fold = load_trained_fold(trained["results"])
    image = os.path.join(trained["paths"]["imagesTs"], "case_006_0000.nii.gz")
    volume, spacing = read_image([image])
    ours = segment_volume(onnx_runner(str(exported / "DANIETrainerTest_fold0.onnx")), volume, spacing,
                          fold.preprocessing, fold.patch_size)
    reference = segment_volume(torch_runner(fold.network), volume, spacing, fold.preprocessing, fold.patch_size)
    assert ours.shape == volume.shape[1:] == (6, 60, 52)
    assert (ours == reference).mean() > 0.999 and set(np.unique(ours)) <= set(range(6))


def test_documented_example_runs(trained, exported, tmp_path):
    """The python block of docs/export.md, with its paths pointed at the tiny model and a test case."""
    text = open(DOCS).read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    image = os.path.join(trained["paths"]["imagesTs"], "case_007_0000.nii.gz")
    values = {"export_dir": str(exported), "model_name": "DANIETrainerTest_fold0", "image_file": image,
              "out_file": str(tmp_path / "case_007.nii.gz")}
    for name, value in values.items():
        code, n = re.subn(rf'^{name} = ".*"$', f"{name} = {value!r}", code, flags=re.M)
        assert n == 1, f"docs/export.md no longer sets {name}"
    exec(compile(code, "docs/export.md", "exec"), {})
    seg, img = sitk.ReadImage(values["out_file"]), sitk.ReadImage(image)
    assert seg.GetSize() == img.GetSize() and seg.GetSpacing() == img.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= set(range(6))


def test_bad_inputs_are_refused_clearly(trained, tmp_path):
    with pytest.raises(TrainedModelError, match="plans.json does not exist: give the nnU-Net results folder"):
        load_trained_fold(str(tmp_path))
    with pytest.raises(TrainedModelError, match=r"checkpoint .*fold_3.* does not exist"):
        load_trained_fold(trained["results"], fold="3")
    truncated = tmp_path / "DANIETrainerTest__nnUNetPlans__2d"
    (truncated / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(os.path.join(trained["results"], name), truncated / name)
    checkpoint = open(os.path.join(trained["results"], "fold_0", "checkpoint_final.pth"), "rb").read(4096)
    (truncated / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint)
    with pytest.raises(TrainedModelError, match="truncated or not an nnU-Net checkpoint"):
        load_trained_fold(str(truncated))
    # a small stand-in fold (HAP-only DANIE) for the export refusals
    network = create_danie("A.2", (32, 32), 1, 2, dims=(8, 16, 32, 64)).eval()
    fold = TrainedFold(network, str(tmp_path / "Small__nnUNetPlans__2d"), "0", "checkpoint_final.pth", "2d",
                       Preprocessing((1.0, 1.0), normalization=({"scheme": "NoNormalization"},)),
                       {"background": 0, "organ": 1}, {"0": "CT"}, ".nii.gz")
    with pytest.raises(TrainedModelError, match="unknown export format"):
        export_fold(fold, str(tmp_path / "x"), ["tensorrt"])
    # a model that does not match PyTorch (forced by an impossible tolerance) leaves nothing behind
    out = tmp_path / "refused"
    with pytest.raises(TrainedModelError, match="differs from PyTorch"):
        export_fold(fold, str(out), ["torchscript"], tolerance=-1.0)
    assert os.listdir(out) == []
    sidecar = export_fold(fold, str(out), ["torchscript"])
    assert sorted(os.listdir(out)) == ["Small_fold0.json", "Small_fold0.torchscript.pt"]
    assert sidecar["parity"]["torchscript"]["max_relative_difference"] <= 1e-4
