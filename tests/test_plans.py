"""plans/: DANIE configurations added to nnU-Net plans by inheritance (used by the stock commands: test_plans_e2e)."""
import json

import pytest

from danie_nnunet.plans.danie_plans import (MARKER, PlanRequest, PlansError, add_danie_configurations,
                                            danie_configuration)

SYNAPSE_LIKE_JSON = {"channel_names": {"0": "CT"}, "labels": {f"c{i}": i for i in range(9)}, "numTraining": 18}


def synapse_like_plans():
    """The parts of nnU-Net's plans for Synapse at native resolution that the DANIE configurations use."""
    return {"plans_name": "nnUNetPlans", "original_median_shape_after_transp": [148, 512, 512],
            "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 12,
                                      "patch_size": [512, 512], "spacing": [0.76, 0.76],
                                      "median_image_size_in_voxels": [512.0, 512.0],
                                      "architecture": {"network_class_name": "dynamic_network_architectures."
                                                       "architectures.unet.PlainConvUNet", "arch_kwargs": {},
                                                       "_kw_requires_import": []}}}}


def test_paper_protocol_maps_the_median_slice_to_224_pixels():
    name, cfg, notes = danie_configuration(synapse_like_plans(), SYNAPSE_LIKE_JSON, PlanRequest("paper224"))
    assert name == "2d_danie_p224" and cfg["inherits_from"] == "2d"
    assert cfg["patch_size"] == [224, 224] and cfg["median_image_size_in_voxels"] == pytest.approx([224, 224])
    assert cfg["spacing"] == pytest.approx([0.76 * 512 / 224] * 2)
    assert cfg["data_identifier"] == "nnUNetPlans_2d_danie_p224"  # other spacing: its own preprocessed data
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "danie_nnunet.network.DANIE.from_plans"
    assert arch["arch_kwargs"]["img_size"] == [224, 224] and arch["arch_kwargs"]["config"]["name"] == "L"
    assert cfg[MARKER]["protocol"] == "paper224"


def test_native_protocol_keeps_nnunet_data_and_rounds_the_patch():
    plans = synapse_like_plans()
    plans["configurations"]["2d"]["patch_size"] = [512, 450]
    _, cfg, _ = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native"))
    assert cfg["patch_size"] == [512, 480] and cfg["spacing"] == [0.76, 0.76]
    assert cfg["data_identifier"] == "nnUNetPlans_2d"


def test_batch_size_follows_danie_memory_not_the_unet():
    plans = synapse_like_plans()
    small = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native", "L", gpu_memory_gib=24))[1]
    large = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native", "L", gpu_memory_gib=80))[1]
    s_model = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native", "S", gpu_memory_gib=24))[1]
    assert 2 <= small["batch_size"] < s_model["batch_size"] and small["batch_size"] < large["batch_size"]
    assert small["batch_size"] < 12  # nnU-Net's U-Net plan would put 12 slices of 512^2 on 8 GB
    fixed = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("paper224", batch_size=24))[1]
    assert fixed["batch_size"] == 24
    with pytest.raises(PlansError, match="does not fit"):
        danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native", "L", gpu_memory_gib=2))


def test_a_batch_past_the_estimate_names_the_recomputation_that_fits_it():
    # DANIE-L at 512 x 512 needs 1.8 GiB + 1.65 GiB per slice without recomputation: no slice fits 85 % of 4 GiB,
    # nnU-Net's minimum of 2 does with recomputed segments (what DANIETrainer will do on such a card)
    plans = synapse_like_plans()
    _, cfg, notes = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native", "L", gpu_memory_gib=4))
    assert cfg["batch_size"] == 2
    note = next(n for n in notes if "without recomputation" in n)
    assert not note.startswith("warning") and "recomputing" in note and "within 3.4 GiB" in note
    estimate = float(notes[-1].rsplit("estimated training memory ", 1)[1].split()[0])
    assert estimate <= 3.4  # the plan's estimate, not the 5.1 GiB without recomputation
    # asked for more than even recomputing everything fits: kept as asked, with a warning
    # (the paper's batch 24 fits 8 GiB that way: 6.6 GiB for 34 % more traffic)
    _, cfg, notes = danie_configuration(plans, SYNAPSE_LIKE_JSON, PlanRequest("native", "L", 8, batch_size=48))
    assert cfg["batch_size"] == 48
    assert any(n.startswith("warning: batch 48") and "out-of-memory" in n for n in notes)


def test_refuses_foreign_configurations_and_is_idempotent(tmp_path, monkeypatch):
    folder = tmp_path / "Dataset500_Plans"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(SYNAPSE_LIKE_JSON))
    plans = synapse_like_plans()
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    report = add_danie_configurations("Dataset500_Plans", [PlanRequest("paper224")])
    assert report["2d_danie_p224"][0].startswith("added")
    written = (folder / "nnUNetPlans.json").read_bytes()
    assert (folder / "nnUNetPlans.json.before_danie").read_text() == json.dumps(plans)
    report = add_danie_configurations("Dataset500_Plans", [PlanRequest("paper224")])
    assert "already up to date" in report["2d_danie_p224"][0]
    assert (folder / "nnUNetPlans.json").read_bytes() == written
    changed = add_danie_configurations("Dataset500_Plans", [PlanRequest("paper224", batch_size=8)])
    assert changed["2d_danie_p224"][0].startswith("updated")
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["configurations"]["2d_danie_p256"] = {"inherits_from": "2d", "patch_size": [256, 256]}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    with pytest.raises(PlansError, match="did not write"):
        add_danie_configurations("Dataset500_Plans", [PlanRequest("paper256")])
    assert json.loads((folder / "nnUNetPlans.json").read_text()) == plans
