"""ImageNet weights from local files made here (never downloaded): formats, window resizing, clear errors."""
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from danie_nnunet import create_danie
from danie_nnunet.cli import main as cli_main
from danie_nnunet.pretrained import PretrainedWeightsError, load_imagenet_weights


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An ImageNet-layout maxvit_tiny_tf_224 checkpoint (random values, 224 windows) in several formats."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = timm.create_model("maxvit_tiny_tf_224", pretrained=False).state_dict()
    save_file(state, str(folder / "maxvit_tiny_tf_224.in1k.safetensors"))
    torch.save({"state_dict": state}, folder / "wrapped.pth")
    hf = folder / "hf_cache" / "models--timm--maxvit_tiny_tf_224.in1k" / "snapshots" / "abc123"
    hf.mkdir(parents=True)
    save_file(state, str(hf / "model.safetensors"))
    return folder, state


@pytest.mark.parametrize("source", ["maxvit_tiny_tf_224.in1k.safetensors", "wrapped.pth", ".", "hf_cache"])
def test_loads_every_backbone_tensor_and_resizes_windows(tiny_weights, source):
    folder, state = tiny_weights
    net = create_danie("S", (64, 256), 1, 4)  # windows (2, 8) instead of the checkpoint's 7x7
    report = load_imagenet_weights(net, str(folder / source))
    assert report.loaded == len(net.sap.state_dict()) == 554
    assert len(report.resized) == 22 and len(report.ignored) == 6  # rel-pos tables; classifier head
    assert torch.equal(net.sap.stem.conv1.weight, state["stem.conv1.weight"])
    assert torch.equal(net.sap.stages_3.blocks[1].attn_grid.mlp.fc2.weight,
                       state["stages.3.blocks.1.attn_grid.mlp.fc2.weight"])
    table = net.sap.stages_0.blocks[0].attn_block.attn.rel_pos.relative_position_bias_table
    assert table.shape[-2:] == (3, 15) and torch.isfinite(table).all()


def test_environment_variable_is_the_default_source(tiny_weights, monkeypatch):
    folder, _ = tiny_weights
    net = create_danie("S", (224, 224), 3, 2)
    assert load_imagenet_weights(net) is None  # unset: from scratch, nothing happens
    monkeypatch.setenv("DANIE_PRETRAINED", str(folder))
    assert load_imagenet_weights(net).resized == []  # 224: windows stay 7x7


def test_timm_input_channel_adaptation(tiny_weights):
    folder, state = tiny_weights
    net = create_danie("S", (64, 64), 2, 4, input_adapter="timm")
    report = load_imagenet_weights(net, str(folder))
    assert report.adapted == ["stem.conv1.weight"] and net.sap.stem.conv1.weight.shape[1] == 2


def test_errors_say_what_is_wrong(tiny_weights, tmp_path):
    folder, _ = tiny_weights
    large = create_danie("L", (64, 64), 1, 4)
    with pytest.raises(PretrainedWeightsError, match="maxvit_small_tf_224 is the SAP backbone of DANIE-L"):
        load_imagenet_weights(large, str(folder / "wrapped.pth"))  # tiny weights into DANIE-L
    with pytest.raises(PretrainedWeightsError, match="no weights file for maxvit_small_tf_224"):
        load_imagenet_weights(large, str(folder))
    small = create_danie("S", (64, 64), 1, 4)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        load_imagenet_weights(small, str(tmp_path / "missing.safetensors"))
    data = (folder / "maxvit_tiny_tf_224.in1k.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedWeightsError, match="truncated or not a weights file"):
        load_imagenet_weights(small, str(tmp_path / "truncated.safetensors"))
    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(PretrainedWeightsError, match="truncated or not a weights file"):
        load_imagenet_weights(small, str(tmp_path / "notes.pth"))
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pth")
    with pytest.raises(PretrainedWeightsError, match="no tensor state dict"):
        load_imagenet_weights(small, str(tmp_path / "no_tensors.pth"))
    with pytest.raises(PretrainedWeightsError, match="no SAP stream"):
        load_imagenet_weights(create_danie("A.2", (64, 64), 1, 4), str(folder))


class Payload:
    """Stands for arbitrary code a pickle could run."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(PretrainedWeightsError):
        load_imagenet_weights(create_danie("S", (64, 64), 1, 2), str(tmp_path / "evil.pth"))


def test_check_weights_command(tiny_weights, capsys):
    folder, _ = tiny_weights
    assert cli_main(["check-weights", str(folder), "--variant", "S", "--size", "64"]) == 0
    assert "loaded 554 tensors" in capsys.readouterr().out
    assert cli_main(["check-weights", str(folder), "--variant", "L", "--size", "64"]) == 2
    assert "no weights file for maxvit_small_tf_224" in capsys.readouterr().err
