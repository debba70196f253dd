"""Predicting single images with the shared tiny DANIE model in-process, and comparing image geometry."""
import functools
import os

import numpy as np
import SimpleITK as sitk


@functools.lru_cache(maxsize=None)
def load_predictor(model_folder: str, ext_trainer: str):
    """nnU-Net's own predictor on the trained model folder (built once per test session)."""
    os.environ["nnUNet_extTrainer"] = ext_trainer  # the checkpoint names DANIETrainerTest: nnU-Net looks it up
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return predictor


def predict(trained, image_path: str, out_dir: str) -> str:
    """Predict one case (file named CASE_0000.nii.gz) as `nnUNetv2_predict` does, without worker processes."""
    predictor = load_predictor(trained["results"], trained["env"]["nnUNet_extTrainer"])
    case = os.path.basename(image_path)[: -len("_0000.nii.gz")]
    os.makedirs(out_dir, exist_ok=True)
    predictor.predict_from_files_sequential([[image_path]], [os.path.join(out_dir, case)], save_probabilities=False,
                                            overwrite=True)
    return os.path.join(out_dir, case + ".nii.gz")


def assert_same_geometry(prediction: sitk.Image, image: sitk.Image, atol: float = 1e-4):
    """Size exactly; spacing, origin and direction to `atol` (NIfTI stores the header in float32)."""
    assert prediction.GetSize() == image.GetSize()
    assert np.allclose(prediction.GetSpacing(), image.GetSpacing(), rtol=1e-5, atol=atol)
    assert np.allclose(prediction.GetOrigin(), image.GetOrigin(), rtol=1e-5, atol=atol)
    assert np.allclose(prediction.GetDirection(), image.GetDirection(), atol=atol)
