"""The stock nnU-Net commands with DANIE trainers on a tiny synthetic dataset (CPU), as a user runs them.

plan_and_preprocess -> train (killed in epoch 1) -> train --c -> predict -> ensemble -> evaluate ->
train --val --npz -> find_best_configuration; plus the trainer inside nnU-Net's machinery in-process.
"""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from danie_nnunet.synthetic import LABELS
from nnunet_helpers import DATASET, DATASET_NAME, TRAINER, nnunet

pytestmark = pytest.mark.e2e

def test_planned_patch_is_rounded_up_and_saved_for_inference(trained):
    planned = json.load(open(os.path.join(trained["preprocessed"], "nnUNetPlans.json")))["configurations"]["2d"]["patch_size"]
    saved = json.load(open(os.path.join(trained["results"], "plans.json")))["configurations"]["2d"]["patch_size"]
    assert any(p % 32 for p in planned)
    assert saved == [-(-p // 32) * 32 for p in planned]
    assert f"rounded up to {saved}" in trained["resumed"].stdout


def test_killed_training_resumes_with_continue(trained):
    fold = os.path.join(trained["results"], "fold_0")
    assert trained["killed"].returncode == 137
    assert "Epoch 1" in trained["resumed"].stdout and "Epoch 0\n" not in trained["resumed"].stdout
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    summary = json.load(open(os.path.join(fold, "validation", "summary.json")))
    assert set(summary["mean"]) == {str(v) for v in LABELS.values() if v > 0}
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 2
    assert any(k.startswith("sap.") for k in checkpoint["network_weights"])


def test_each_epoch_logs_where_its_time_went(trained):
    # DANIETrainerTest: 2 training and 1 validation step per epoch; the parts fit in nnU-Net's own epoch time
    import glob
    import re
    logs = "".join(open(f).read() for f in sorted(glob.glob(os.path.join(trained["results"], "fold_0",
                                                                          "training_log_*.txt"))))
    parts = re.findall(r"Epoch time by part: training (\d+) steps? ([\d.]+) s .*?, waiting for batches ([\d.]+) s; "
                       r"validation (\d+) steps? ([\d.]+) s .*?, waiting for batches ([\d.]+) s; the rest "
                       r"(-?[\d.]+) s \(of ([\d.]+) s\)", logs)
    totals = [float(t) for t in re.findall(r"Epoch time: ([\d.]+) s", logs)]
    assert len(parts) == len(totals) >= 2
    for (train_n, train_s, train_wait, val_n, val_s, val_wait, rest, total), nnunet_total in zip(parts, totals):
        assert (int(train_n), int(val_n)) == (2, 1)
        assert float(train_s) > 0 and float(val_s) > 0 and float(rest) >= 0
        assert float(total) == pytest.approx(nnunet_total, abs=0.02)
        summed = sum(float(v) for v in (train_s, train_wait, val_s, val_wait, rest))
        assert summed == pytest.approx(float(total), abs=0.03)


def test_predict_ensemble_and_evaluate(trained):
    env, paths, root = trained["env"], trained["paths"], trained["root"]
    outs = []
    for name, extra in (("pred_a", []), ("pred_b", ["-step_size", "0.75"])):
        out = str(root / name)
        nnunet(["nnUNetv2_predict", "-i", paths["imagesTs"], "-o", out, "-d", DATASET, "-c", "2d", "-tr", TRAINER,
                "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities", *extra], env)
        outs.append(out)
    ensemble = str(root / "ensemble")
    nnunet(["nnUNetv2_ensemble", "-i", *outs, "-o", ensemble, "-np", "1"], env)
    for case in sorted(os.listdir(paths["imagesTs"])):
        image = sitk.ReadImage(os.path.join(paths["imagesTs"], case))
        for folder in outs + [ensemble]:
            seg = sitk.ReadImage(os.path.join(folder, case.replace("_0000", "")))
            assert seg.GetSize() == image.GetSize() and seg.GetSpacing() == image.GetSpacing()
            assert seg.GetOrigin() == image.GetOrigin() and seg.GetDirection() == image.GetDirection()
            assert set(np.unique(sitk.GetArrayFromImage(seg))) <= set(LABELS.values())
    summary = str(root / "summary.json")
    nnunet(["nnUNetv2_evaluate_simple", paths["labelsTs"], ensemble, "-l", "1", "2", "3", "4", "5", "-o", summary,
            "-np", "1"], env)
    means = json.load(open(summary))["mean"]
    assert len(means) == 5 and all(0.0 <= m["Dice"] <= 1.0 for m in means.values() if not np.isnan(m["Dice"]))


def test_validation_exports_npz_and_best_configuration(trained):
    env = trained["env"]
    nnunet(["nnUNetv2_train", DATASET, "2d", "0", "-tr", TRAINER, "-device", "cpu", "--val", "--npz"], env)
    validation = os.path.join(trained["results"], "fold_0", "validation")
    assert any(f.endswith(".npz") for f in os.listdir(validation))
    nnunet(["nnUNetv2_find_best_configuration", DATASET, "-c", "2d", "-tr", TRAINER, "-f", "0", "-np", "1"], env)
    instructions = open(os.path.join(env["nnUNet_results"], DATASET_NAME, "inference_instructions.txt")).read()
    assert TRAINER in instructions and "nnUNetv2_predict" in instructions


def test_3d_configuration_is_refused_with_a_clear_message(trained):
    proc = nnunet(["nnUNetv2_train", DATASET, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
                  trained["env"], expect_ok=False)
    assert proc.returncode != 0
    assert "DANIE is a 2D network" in proc.stderr and "nnUNetv2_train DATASET 2d FOLD" in proc.stderr


def test_stock_lookup_finds_every_danie_trainer(trained, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from danie_nnunet.trainers import TRAINERS
    monkeypatch.setenv("nnUNet_extTrainer", trained["env"]["nnUNet_extTrainer"])
    for trainer in TRAINERS:
        assert recursive_find_trainer_class_by_name(trainer.__name__) is trainer


def test_danie_l_trainer_inside_nnunet(trained, monkeypatch):
    """DANIETrainer (L) in nnU-Net's machinery: recipe, deep supervision, a train and a validation step."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from danie_nnunet.trainers import DANIETrainer
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, trained["env"][var])
    pre = trained["preprocessed"]
    plans = load_json(os.path.join(pre, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = DANIETrainer(plans=plans, configuration="2d", fold=1, dataset_json=load_json(
        os.path.join(pre, "dataset.json")), device=torch.device("cpu"))
    trainer.initialize()
    assert type(trainer.network).__name__ == "DANIE" and trainer.network.cfg.name == "L"
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-4 and trainer.optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(trainer.loss, DeepSupervisionWrapper) and trainer.loss.weight_factors == (0, 1, 1, 1, 1)
    assert trainer.loss.loss.weight_ce == 0.3 and trainer.loss.loss.weight_dice == 0.7
    trainer.lr_scheduler.step(500)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-4  # constant learning rate
    patch = trainer.configuration_manager.patch_size
    batch = {"data": torch.randn(2, 1, *patch), "target": [torch.randint(0, 6, (2, 1, *patch)).float()] * 5}
    trainer.set_deep_supervision_enabled(True)
    trainer.network.train()
    assert np.isfinite(trainer.train_step(batch)["loss"])
    trainer.network.eval()
    val = trainer.validation_step(batch)
    assert np.isfinite(val["loss"]) and len(val["tp_hard"]) == 5
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        assert trainer.network(batch["data"]).shape == (2, 6, *patch)


def test_saved_plans_rebuild_the_network_without_a_danie_trainer(trained):
    """The results plans.json names DANIE and its whole configuration: nnU-Net's generic builder rebuilds it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(os.path.join(trained["results"], "plans.json")).get_configuration("2d")
    assert configuration.network_arch_class_name == "danie_nnunet.network.DANIE.from_plans"
    assert configuration.network_arch_init_kwargs["config"]["name"] == "S"
    net = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                 configuration.network_arch_init_kwargs_req_import, 1, 6, deep_supervision=False)
    checkpoint = torch.load(os.path.join(trained["results"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    net.load_state_dict(checkpoint["network_weights"])  # strict
