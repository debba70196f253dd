"""nnU-Net's pretraining and fine-tuning (`nnUNetv2_train ... -pretrained_weights CHECKPOINT`) with DANIE.

nnU-Net transfers every weight of a checkpoint but the segmentation layers, which it knows by the name
`.seg_layers.`: DANIE's heads carry that name, so a DANIE trained on one dataset fine-tunes on another with other
classes. Checkpoints written before the heads took it (`heads.heads.K`) still load.
"""
import collections
import json
import os

import pytest
import SimpleITK as sitk
import torch

from danie_nnunet import create_danie
from danie_nnunet.network import CheckpointMismatchError
from danie_nnunet.synthetic import write_dataset
from nnunet_helpers import TRAINER, nnunet


def _danie(num_classes, seed):
    torch.manual_seed(seed)
    return create_danie("S", img_size=(64, 64), in_chans=1, num_classes=num_classes, deep_supervision=True)


def _before_the_rename(state_dict):
    return collections.OrderedDict((k.replace("heads.seg_layers.", "heads.heads."), v) for k, v in state_dict.items())


@pytest.mark.parametrize("compiled", [False, True], ids=["plain", "compiled wrapper"])
def test_nnunet_transfers_every_weight_but_the_heads_to_another_class_count(tmp_path, compiled):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    source = _danie(6, seed=0).state_dict()
    torch.save({"network_weights": source}, tmp_path / "checkpoint_final.pth")
    target = _danie(3, seed=1)
    own_heads = {k: v.clone() for k, v in target.state_dict().items() if ".seg_layers." in k}
    assert len(own_heads) == 8  # four heads, weight and bias
    load_pretrained_weights(torch.compile(target) if compiled else target, str(tmp_path / "checkpoint_final.pth"))
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in loaded if k not in own_heads)
    assert all(torch.equal(loaded[k], v) for k, v in own_heads.items())  # new classes: the heads start afresh


@pytest.mark.parametrize("other", [dict(variant="L"), dict(img_size=(96, 96)), dict(in_chans=2)],
                         ids=["another variant", "another patch size", "other input channels"])
def test_weights_that_cannot_transfer_stop_with_nnunets_message_naming_the_key(tmp_path, other):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    torch.save({"network_weights": _danie(6, seed=0).state_dict()}, tmp_path / "checkpoint_final.pth")
    kwargs = {**dict(variant="S", img_size=(64, 64), in_chans=1), **other}
    with torch.device("meta"):
        target = create_danie(kwargs.pop("variant"), num_classes=3, **kwargs)
    target.to_empty(device="cpu")
    with pytest.raises(AssertionError, match=r"The shape of the parameters of key (sap|hap|input_adapter)\S* is not "
                                             r"the same|Key \S+ is missing"):
        load_pretrained_weights(target, str(tmp_path / "checkpoint_final.pth"))


def test_a_checkpoint_from_before_the_heads_rename_loads_and_is_checked():
    source = _danie(6, seed=0).eval()
    old = _before_the_rename(source.state_dict())
    assert "heads.heads.0.weight" in old
    same = _danie(6, seed=1).eval()
    same.load_state_dict(old)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(source(x), same(x)))
    # the heads alone, as a module of their own, take the old names too (strict: nothing missing or unexpected)
    same.heads.load_state_dict({k.removeprefix("heads."): v for k, v in old.items() if k.startswith("heads.")})
    with pytest.raises(CheckpointMismatchError, match="classes: checkpoint 6, this network 3"):
        _danie(3, seed=1).load_state_dict(old)


def _dataset_with_four_classes(raw, dataset_id):
    """The shared model's synthetic dataset with both kidneys as one class: 5 labels instead of 6."""
    paths = write_dataset(raw, dataset_id, "FewerClasses", num_train=6, num_test=0, shape=(6, 60, 52), seed=1)
    for name in os.listdir(paths["labelsTr"]):
        path = os.path.join(paths["labelsTr"], name)
        label = sitk.ReadImage(path)
        array = sitk.GetArrayFromImage(label)
        array[array == 4] = 3
        array[array == 5] = 4
        merged = sitk.GetImageFromArray(array)
        merged.CopyInformation(label)
        sitk.WriteImage(merged, path)
    dataset_json = os.path.join(paths["dataset"], "dataset.json")
    meta = json.load(open(dataset_json))
    meta["labels"] = {"background": 0, "liver": 1, "spleen": 2, "kidneys": 3, "aorta": 4}
    json.dump(meta, open(dataset_json, "w"), indent=2)


@pytest.mark.e2e
def test_stock_cli_fine_tunes_a_trained_danie_on_a_dataset_with_other_classes(trained):
    env, dataset = trained["env"], "993"
    _dataset_with_four_classes(env["nnUNet_raw"], int(dataset))
    nnunet(["nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "2d", "-np", "1", "-npfp", "1"], env)
    pretrained = os.path.join(trained["results"], "fold_0", "checkpoint_final.pth")
    run = nnunet(["nnUNetv2_train", dataset, "2d", "0", "-tr", TRAINER, "-device", "cpu",
                  "-pretrained_weights", pretrained], env, nnUNet_n_proc_DA="0")
    assert "Loading pretrained weights from file" in run.stdout
    transferred = [line.split(" shape ")[0] for line in run.stdout.splitlines() if " shape torch.Size" in line]
    assert any(k.startswith("sap.") for k in transferred) and any(k.startswith("hap.") for k in transferred)
    assert not any(".seg_layers." in k for k in transferred)
    folder = os.path.join(env["nnUNet_results"], "Dataset993_FewerClasses", f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    weights = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["network_weights"]
    assert weights["heads.seg_layers.0.weight"].shape[0] == 5
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
