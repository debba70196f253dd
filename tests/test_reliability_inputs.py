"""Bad and unusual input: a clear error (non-zero exit, nothing half-written) or a prediction with the input's geometry.

Predictions use the shared tiny DANIE model (`trained` fixture, tests marked e2e) through nnU-Net's own predictor.
"""
import argparse
import json
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from danie_nnunet import create_danie
from danie_nnunet.checks import check_case_folder, check_dataset, check_image, register
from danie_nnunet.network import CheckpointMismatchError
from danie_nnunet.synthetic import write_dataset
from reliability_helpers import assert_same_geometry, predict



def ct_volume(shape=(3, 60, 52), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 200, shape) - 300).astype(np.int16)


def write(array, path, spacing=(1.5, 1.5, 3.0), direction=None, origin=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    if direction is not None:
        image.SetDirection(direction)
    if origin is not None:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return str(path)


def rotation(degrees):
    a = np.deg2rad(degrees)
    return tuple(np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]).ravel())


def big_endian_las(path):
    """A big-endian NIfTI in LAS orientation (x flipped), written with nibabel as scanners' tools do."""
    affine = np.diag([-0.8, 1.1, 2.5, 1.0])
    affine[:3, 3] = [40.0, -20.0, 7.0]
    data = np.ascontiguousarray(ct_volume((4, 50, 40)).transpose(2, 1, 0))  # nibabel: x, y, z
    image = nib.Nifti1Image(data, affine, header=nib.Nifti1Header(endianness=">"))
    image.set_data_dtype(">i2")
    nib.save(image, str(path))
    saved = nib.load(str(path))
    assert saved.header.endianness == ">" and saved.get_data_dtype() == np.dtype(">i2")
    assert nib.aff2axcodes(saved.affine) == ("L", "A", "S")
    return str(path)


CASES = {  # name -> function(tmp_path) -> image path; each must predict with its own geometry
    "constant image": lambda d: write(np.full((2, 60, 52), -1000, np.int16), d / "constant_0000.nii.gz"),
    "single-slice volume": lambda d: write(ct_volume((1, 60, 52)), d / "oneslice_0000.nii.gz"),
    "2D image": lambda d: write(ct_volume((1, 60, 52))[0], d / "twod_0000.nii.gz", spacing=(1.5, 1.5)),
    "smaller than the patch": lambda d: write(ct_volume((2, 20, 12)), d / "small_0000.nii.gz"),
    "anisotropic and oblique": lambda d: write(ct_volume((2, 40, 90)), d / "oblique_0000.nii.gz",
                                                spacing=(0.6, 2.2, 4.0), direction=rotation(30),
                                                origin=(-12.5, 80.0, 3.0)),
    "big-endian, non-RAS NIfTI": lambda d: big_endian_las(d / "bigendian_0000.nii.gz"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(CASES))
def test_unusual_images_predict_with_their_own_geometry(trained, tmp_path, case):
    image_path = CASES[case](tmp_path)
    assert [f for f in check_image(image_path) if f.severity == "error"] == []
    prediction = sitk.ReadImage(predict(trained, image_path, str(tmp_path / "out")))
    assert_same_geometry(prediction, sitk.ReadImage(image_path))
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(range(6))


def test_constant_image_is_reported_as_a_warning(tmp_path):
    findings = check_image(CASES["constant image"](tmp_path))
    assert [f.severity for f in findings] == ["warning"] and "nothing to segment" in findings[0].message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_nan_and_inf_voxels_are_errors(tmp_path, bad, ending):
    volume = ct_volume().astype(np.float32)
    volume[1, 10, 10] = bad
    path = write(volume, tmp_path / f"bad_0000{ending}")
    if ending == ".nii.gz":  # what nnU-Net's default reader sees: a 0 instead of NaN/Inf, no message
        assert sitk.GetArrayFromImage(sitk.ReadImage(path))[1, 10, 10] == 0
    (finding,) = check_image(path)
    assert finding.severity == "error" and ("1 NaN" if np.isnan(bad) else "1 Inf") in finding.message
    assert "nan_to_num" in finding.message


def test_vector_4d_truncated_and_badly_spaced_files_are_errors(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((2, 20, 20, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb_0000.nii.gz"))
    assert "3 values per voxel" in check_image(str(tmp_path / "rgb_0000.nii.gz"))[0].message
    four_d = nib.Nifti1Image(np.zeros((20, 20, 3, 2), np.int16), np.eye(4))
    nib.save(four_d, str(tmp_path / "series_0000.nii.gz"))
    assert "4D with 2 volumes" in check_image(str(tmp_path / "series_0000.nii.gz"))[0].message
    for ending in (".nii.gz", ".nii"):  # SimpleITK reads both truncated files without an error, zero-filled
        data = open(write(ct_volume(), tmp_path / f"full_0000{ending}"), "rb").read()
        (tmp_path / f"cut_0000{ending}").write_bytes(data[: len(data) // 2])
        assert sitk.ReadImage(str(tmp_path / f"cut_0000{ending}")).GetSize() == (52, 60, 3)
        assert "the file is truncated" in check_image(str(tmp_path / f"cut_0000{ending}"))[0].message
    header = open(write(ct_volume(), tmp_path / "flat_0000.mha"), "rb").read()
    (tmp_path / "flat_0000.mha").write_bytes(header.replace(b"ElementSpacing = 1.5 1.5 3", b"ElementSpacing = 1.5 1.5 0"))
    assert "Zero-valued spacing is not supported" in check_image(str(tmp_path / "flat_0000.mha"))[0].message


def test_png_16_bit_rgb_and_rgba(tmp_path):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    gray16 = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)
    Image.fromarray(gray16).save(tmp_path / "gray16_0000.png")
    assert check_image(str(tmp_path / "gray16_0000.png"), channels=1) == []
    data, _ = NaturalImage2DIO().read_images([str(tmp_path / "gray16_0000.png")])
    assert data.shape == (1, 1, 40, 30) and data.max() == gray16.max()  # nnU-Net keeps the 16-bit range
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb_0000.png")
    assert check_image(str(tmp_path / "rgb_0000.png"), channels=3) == []
    assert "holds 3 channel(s), but 1 expected" in check_image(str(tmp_path / "rgb_0000.png"), channels=1)[0].message
    Image.fromarray(np.dstack([rgb, np.full((40, 30), 255, np.uint8)])).save(tmp_path / "rgba_0000.png")
    data, _ = NaturalImage2DIO().read_images([str(tmp_path / "rgba_0000.png")])
    assert data.shape[0] == 4  # what nnU-Net would feed a 3-channel model
    messages = [f.message for f in check_image(str(tmp_path / "rgba_0000.png"), channels=3)]
    assert any("alpha channel" in m and "convert('RGB')" in m for m in messages)


def test_prediction_folder_problems_nnunet_would_ignore_silently(tmp_path):
    model = {"file_ending": ".nii.gz", "channel_names": {"0": "CT", "1": "PET"}}
    folder = tmp_path / "input"
    folder.mkdir()
    assert "has no images" in check_case_folder(str(folder), model)[0].message  # empty folder
    write(ct_volume(), folder / "a_0000.nii.gz")
    write(ct_volume(), folder / "a_0001.nii.gz")
    write(ct_volume(), folder / "b_0000.nii.gz")  # b lacks its PET file
    write(ct_volume(), folder / "c_0000.nii")  # wrong ending: nnUNetv2_predict skips it without a word
    write(ct_volume(), folder / "d.nii.gz")  # no channel suffix
    messages = [str(f) for f in check_case_folder(str(folder), model)]
    assert any("do not end in '.nii.gz'" in m and "c_0000.nii" in m for m in messages)
    assert any("lack the channel suffix _0000" in m and "d.nii.gz" in m for m in messages)
    assert any("input/b" in m and "channel files [0] found, [0, 1] expected" in m for m in messages)
    assert not any("input/a" in m for m in messages)


@pytest.fixture
def raw_dataset(tmp_path):
    paths = write_dataset(str(tmp_path), 995, "Check", num_train=2, num_test=1, shape=(2, 32, 32))
    return paths["dataset"]


def run_cli(args):
    parser = argparse.ArgumentParser(prog="danie-nnunet")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(args)
    return parsed.func(parsed)


def test_check_dataset_command(raw_dataset, capsys):
    assert run_cli(["check-dataset", raw_dataset]) == 0
    assert "0 error(s), 0 warning(s) - OK" in capsys.readouterr().out
    image = os.path.join(raw_dataset, "imagesTr", "case_001_0000.nii.gz")
    volume = sitk.GetArrayFromImage(sitk.ReadImage(image)).astype(np.float32)
    volume[0, 0, 0] = np.inf
    write(volume, image)
    os.remove(os.path.join(raw_dataset, "labelsTr", "case_000.nii.gz"))
    assert run_cli(["check-dataset", raw_dataset]) == 1
    out = capsys.readouterr().out
    assert "case_001_0000.nii.gz: has 0 NaN and 1 Inf voxels" in out and "no label file for 1 training case" in out
    dataset_json = json.load(open(os.path.join(raw_dataset, "dataset.json")))
    del dataset_json["labels"]
    json.dump(dataset_json, open(os.path.join(raw_dataset, "dataset.json"), "w"))
    assert run_cli(["check-dataset", raw_dataset]) == 1
    assert 'no "labels"' in capsys.readouterr().out
    open(os.path.join(raw_dataset, "dataset.json"), "w").write("{not json")
    assert run_cli(["check-dataset", raw_dataset]) == 1 and "is not valid JSON" in capsys.readouterr().out


@pytest.mark.e2e
def test_check_images_command_with_a_model_folder(trained, tmp_path, capsys):
    write(ct_volume(), tmp_path / "ok_0000.nii.gz")
    assert run_cli(["check-images", str(tmp_path), "--model", trained["results"]]) == 0
    rgb = sitk.GetImageFromArray(np.zeros((1, 20, 20, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "colour_0000.nii.gz"))
    assert run_cli(["check-images", str(tmp_path), "--model", trained["results"]]) == 1
    assert "colour_0000.nii.gz: stores 3 values per voxel" in capsys.readouterr().out


def test_nnunet_verify_dataset_integrity_messages(raw_dataset, capfd):
    """Image/label geometry: nnU-Net's own check is clear, so it is the documented one. (Its NaN check never fires
    on NIfTI: SimpleITK reads NaN as 0, see test_nan_and_inf_voxels_are_errors.)"""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    labels = os.path.join(raw_dataset, "labelsTr")
    cropped = sitk.ReadImage(os.path.join(labels, "case_001.nii.gz"))[:, :30, :]  # shape differs from the image
    sitk.WriteImage(cropped, os.path.join(labels, "case_001.nii.gz"))
    with pytest.raises(RuntimeError, match="Some images have errors"):
        verify_dataset_integrity(raw_dataset, num_processes=1)
    assert "Shape mismatch between segmentation and corresponding images" in capfd.readouterr().out


@pytest.mark.e2e
@pytest.mark.parametrize("swap", ["DANIE-L weights", "3-class dataset.json"])
def test_checkpoint_of_another_variant_or_class_count_fails_clearly_at_prediction(trained, tmp_path, swap):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    model = tmp_path / "model"
    shutil.copytree(trained["results"], model, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt"))
    if swap == "DANIE-L weights":
        checkpoint_file = model / "fold_0" / "checkpoint_final.pth"
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
        checkpoint["network_weights"] = create_danie("L", (64, 64), 1, 6).state_dict()
        torch.save(checkpoint, checkpoint_file)
        expected = r"stage-4 width: checkpoint 768 \(DANIE-L\), this network 512 \(DANIE-S\)"
    else:
        dataset_json = json.load(open(model / "dataset.json"))
        dataset_json["labels"] = {"background": 0, "liver": 1, "spleen": 2}
        json.dump(dataset_json, open(model / "dataset.json", "w"))
        expected = "classes: checkpoint 6, this network 3"
    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    os.environ["nnUNet_extTrainer"] = trained["env"]["nnUNet_extTrainer"]
    with pytest.raises(CheckpointMismatchError, match=expected):
        predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))


@pytest.mark.parametrize("other, expected", [
    (dict(variant="S", img_size=(256, 256)), "MaxViT partition size (set by the patch size): checkpoint 8, this network 2"),
    (dict(variant="S", in_chans=3), "input channels: checkpoint 3, this network 1"),
    (dict(variant="S/A.1"), "streams: checkpoint ['sap'], this network ['hap', 'sap']"),
    (dict(variant="S", dcal=False), "16 tensors missing, 0 unexpected (e.g. hap."),  # Table 6's "no Dcal"
])
def test_network_names_what_differs_in_a_foreign_state_dict(other, expected):
    net = create_danie("S", (64, 64), 1, 6)
    foreign = create_danie(other.pop("variant"), **{"img_size": (64, 64), "in_chans": 1, "num_classes": 6, **other})
    with pytest.raises(CheckpointMismatchError, match=re.escape(expected)):
        net.load_state_dict(foreign.state_dict())
    net.load_state_dict(create_danie("S", (64, 64), 1, 6).state_dict())  # the same configuration loads
