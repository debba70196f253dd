"""`convert acdc` on a tiny fixture in the official layout (database/training/patientXXX with Info.cfg, ED/ES frames
and their _gt), the lineage's 70/10/20 patient split, the patient-grouped 5-fold CV, and broken inputs."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from danie_nnunet.convert.acdc import ACDC_LABELS, PAPER_TEST_PATIENTS, PAPER_VAL_PATIENTS, convert_acdc
from danie_nnunet.convert.validation import ConversionError

SPACING = (1.5, 1.5, 10.0)


def write(array, path, spacing=SPACING):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, path)


def write_acdc_fixture(root, patients=range(1, 101), shape=(2, 8, 8)):
    """database/training/patientXXX/{Info.cfg, patientXXX_frame01[_gt].nii.gz, patientXXX_frameES[_gt].nii.gz}
    plus a 4D cine file and the testing/ folder of the official release (both must be ignored)."""
    rng = np.random.default_rng(0)
    training = os.path.join(root, "ACDC", "database", "training")
    for p in patients:
        folder = os.path.join(training, f"patient{p:03d}")
        os.makedirs(folder)
        es = 8 + p % 7
        with open(os.path.join(folder, "Info.cfg"), "w") as f:
            f.write(f"ED: 1\nES: {es}\nGroup: NOR\nHeight: 170.0\nNbFrame: 20\nWeight: 70.0\n")
        for frame in (1, es):
            stem = os.path.join(folder, f"patient{p:03d}_frame{frame:02d}")
            write(rng.normal(size=shape).astype(np.float32), stem + ".nii.gz")
            write(rng.integers(0, 4, shape).astype(np.uint8), stem + "_gt.nii.gz")
    write(np.zeros((3,) + shape, np.float32), os.path.join(training, "patient001", "patient001_4d.nii.gz"),
          SPACING + (1.0,))
    testing = os.path.join(root, "ACDC", "database", "testing", "patient101")
    os.makedirs(testing)
    write(np.zeros(shape, np.float32), os.path.join(testing, "patient101_frame01.nii.gz"))
    return os.path.join(root, "ACDC")


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    return write_acdc_fixture(str(tmp_path_factory.mktemp("download")))


def test_paper_split_70_10_20_patients(acdc, tmp_path):
    result = convert_acdc([acdc], str(tmp_path / "raw"))
    ds = result.dataset_dir
    assert os.path.basename(ds) == "Dataset711_ACDC" and result.num_train == 160 and result.num_test == 40
    dataset = json.load(open(os.path.join(ds, "dataset.json")))
    assert dataset["labels"] == ACDC_LABELS == {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
    assert dataset["channel_names"] == {"0": "cineMRI"} and dataset["danie_benchmark"] == "acdc"
    (fold,) = json.load(open(os.path.join(ds, "splits_final.json")))
    patients = lambda cases: {int(c[7:10]) for c in cases}  # noqa: E731
    assert len(fold["train"]) == 140 and len(fold["val"]) == 20
    assert patients(fold["val"]) == set(PAPER_VAL_PATIENTS)
    assert patients(fold["train"]) == set(range(1, 101)) - set(PAPER_VAL_PATIENTS) - set(PAPER_TEST_PATIENTS)
    test_cases = sorted(f[:-7] for f in os.listdir(os.path.join(ds, "labelsTs")))
    assert patients(test_cases) == set(PAPER_TEST_PATIENTS) and len(test_cases) == 40
    assert "patient002_frame01" in test_cases and "patient002_frame10" in test_cases  # ED and ES (from Info.cfg)
    assert not any("4d" in f for f in os.listdir(os.path.join(ds, "imagesTr")))
    assert not any(f.startswith("patient101") for f in os.listdir(os.path.join(ds, "imagesTs")))
    gt = os.path.join(acdc, "database", "training", "patient001", "patient001_frame01_gt.nii.gz")
    converted = sitk.ReadImage(os.path.join(ds, "labelsTr", "patient001_frame01.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(sitk.ReadImage(gt)))


def test_cv5_keeps_both_frames_of_a_patient_in_one_fold(acdc, tmp_path):
    result = convert_acdc([acdc], str(tmp_path / "raw"), split="cv5")
    assert os.path.basename(result.dataset_dir) == "Dataset712_ACDCCV" and result.num_train == 200
    folds = json.load(open(os.path.join(result.dataset_dir, "splits_final.json")))
    assert len(folds) == 5
    all_val = [c for f in folds for c in f["val"]]
    assert len(all_val) == len(set(all_val)) == 200  # every frame validated exactly once
    for f in folds:
        assert not {c.split("_")[0] for c in f["val"]} & {c.split("_")[0] for c in f["train"]}
        assert len({c.split("_")[0] for c in f["val"]}) == 20


def test_broken_acdc_input(tmp_path):
    root = write_acdc_fixture(str(tmp_path / "download"), patients=range(1, 8))
    training = os.path.join(root, "database", "training")
    os.remove(os.path.join(training, "patient002", "patient002_frame01_gt.nii.gz"))  # ED without ground truth
    bad = np.zeros((2, 8, 8), np.uint8)
    bad[0, 0, 0] = 4
    write(bad, os.path.join(training, "patient003", "patient003_frame01_gt.nii.gz"))  # RV/Myo/LV only
    with open(os.path.join(training, "patient004", "Info.cfg"), "w") as f:
        f.write("ED: 1\nES: 5\n")  # the gt files are frames 01 and 12
    out = str(tmp_path / "raw")
    with pytest.raises(ConversionError) as info:
        convert_acdc([root], out, split="cv5")
    message = str(info.value)
    assert "patient002_frame01.nii.gz: has no ground truth file" in message
    assert "patient004: ground truth for frames [1, 12], but Info.cfg names ED/ES frames [1, 5]" in message
    assert os.listdir(out) == []
    with pytest.raises(ConversionError, match="needs all 100 training patients"):
        convert_acdc([root], out)
    os.remove(os.path.join(training, "patient002", "patient002_frame01.nii.gz"))
    with open(os.path.join(training, "patient002", "Info.cfg"), "w") as f:
        f.write("ED: 10\nES: 10\n")  # now a patient with one labelled frame
    with open(os.path.join(training, "patient004", "Info.cfg"), "w") as f:
        f.write("ED: 1\nES: 12\n")
    with pytest.raises(ConversionError, match=r"patient003_frame01_gt.nii.gz: unexpected label values \[4\]"):
        convert_acdc([root], out, split="cv5")
    assert os.listdir(out) == []
