"""plans/ end to end: each protocol's configuration added to the shared tiny dataset's plans, then preprocessed, trained
and predicted with the stock nnU-Net commands."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_helpers import DATASET, nnunet


@pytest.mark.e2e
def test_each_protocol_preprocesses_trains_and_predicts_with_the_stock_commands(trained):
    env, paths, root = trained["env"], trained["paths"], trained["root"]
    out = nnunet(["danie-nnunet", "plan", DATASET, "--protocol", "native", "paper224", "paper256"], env).stdout
    assert "added 2d_danie_native" in out and "added 2d_danie_p224" in out and "added 2d_danie_p256" in out
    configurations = ["2d_danie_native", "2d_danie_p224", "2d_danie_p256"]
    nnunet(["nnUNetv2_preprocess", "-d", DATASET, "-c", *configurations, "-np", "1", "1", "1"], env)
    for configuration in configurations:
        nnunet(["nnUNetv2_train", DATASET, configuration, "0", "-tr", "DANIETrainerTestOneIteration",
                "-device", "cpu"], env, nnUNet_n_proc_DA="0")
        pred = str(root / f"pred_{configuration}")
        # -npp 0 -nps 0: nnU-Net's sequential prediction, without spawning workers (test_nnunet_e2e runs those)
        nnunet(["nnUNetv2_predict", "-i", paths["imagesTs"], "-o", pred, "-d", DATASET, "-c", configuration,
                "-tr", "DANIETrainerTestOneIteration", "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0"], env)
        for case in sorted(os.listdir(paths["imagesTs"])):
            image = sitk.ReadImage(os.path.join(paths["imagesTs"], case))
            seg = sitk.ReadImage(os.path.join(pred, case.replace("_0000", "")))
            assert seg.GetSize() == image.GetSize() and seg.GetSpacing() == image.GetSpacing()
            assert seg.GetOrigin() == image.GetOrigin() and seg.GetDirection() == image.GetDirection()
            assert np.isin(sitk.GetArrayFromImage(seg), range(6)).all()
    preprocessed = os.path.join(trained["preprocessed"], "nnUNetPlans_2d_danie_p224")
    assert os.path.isdir(preprocessed) and os.listdir(preprocessed)


@pytest.mark.e2e
def test_nnunets_residual_encoder_presets_train_and_predict_danie(trained):
    # nnU-Net 2.8 recommends its ResEnc presets (nnUNetPlannerResEncM/L/XL); a DANIE trainer takes their 2d
    # configuration's patch and batch and replaces the ResidualEncoderUNet with DANIE, in the run's plans.json too
    env, paths, root = trained["env"], trained["paths"], trained["root"]
    nnunet(["nnUNetv2_plan_experiment", "-d", DATASET, "-pl", "nnUNetPlannerResEncM"], env)
    plans = json.load(open(os.path.join(trained["preprocessed"], "nnUNetResEncUNetMPlans.json")))["configurations"]
    assert plans["2d"]["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    # the presets share the default preprocessing: the shared dataset's nnUNetPlans_2d is their data
    assert plans["2d"]["data_identifier"] == "nnUNetPlans_2d"
    trainer = "DANIETrainerTestOneIteration"
    nnunet(["nnUNetv2_train", DATASET, "2d", "0", "-tr", trainer, "-p", "nnUNetResEncUNetMPlans", "-device", "cpu"],
           env, nnUNet_n_proc_DA="0")
    run = os.path.join(env["nnUNet_results"], os.path.basename(trained["preprocessed"]),
                       f"{trainer}__nnUNetResEncUNetMPlans__2d")
    saved = json.load(open(os.path.join(run, "plans.json")))["configurations"]["2d"]
    assert saved["architecture"]["network_class_name"] == "danie_nnunet.network.DANIE.from_plans"
    assert saved["batch_size"] == plans["2d"]["batch_size"]
    pred = str(root / "pred_resenc")
    nnunet(["nnUNetv2_predict", "-i", paths["imagesTs"], "-o", pred, "-d", DATASET, "-c", "2d", "-p",
            "nnUNetResEncUNetMPlans", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    for case in sorted(os.listdir(paths["imagesTs"])):
        seg = sitk.ReadImage(os.path.join(pred, case.replace("_0000", "")))
        assert seg.GetSize() == sitk.ReadImage(os.path.join(paths["imagesTs"], case)).GetSize()
