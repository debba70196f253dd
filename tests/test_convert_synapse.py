"""`convert synapse` on tiny fixtures written in the official BTCV layout (RawData/Training/img, label) and in
TransUNet's npz/h5 layout, including broken ones; idempotency and --overwrite; a zip source."""
import argparse
import json
import os
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from danie_nnunet.convert import register
from danie_nnunet.convert.synapse import (BTCV_LABELS, SYNAPSE8_LABELS, TRANSUNET_TEST_IDS, TRANSUNET_TRAIN_IDS,
                                          convert_synapse)
from danie_nnunet.convert.validation import ConversionError
from danie_nnunet.synthetic import make_case

BTCV_IDS = list(range(1, 11)) + list(range(21, 41))
SPACING_XYZ = (0.8, 0.8, 3.0)
# danie_nnunet.synthetic's labels (liver, spleen, right kidney, left kidney, aorta) -> BTCV label values
SYNTHETIC_TO_BTCV = np.array([0, 6, 1, 2, 3, 8], np.uint8)


def write_volume(array, path, spacing_xyz=SPACING_XYZ):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, path, useCompression=True)


def write_btcv_fixture(root, ids=BTCV_IDS, shape=(4, 40, 40), seed=0):
    """The official Synapse/BTCV layout RawData/Training/{img,label}; labels use BTCV's 13 values (synthetic
    organs plus a patch of esophagus (5) and of pancreas (11) in every case). Returns the RawData folder."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "RawData")
    for sub in ("Training/img", "Training/label", "Testing/img"):
        os.makedirs(os.path.join(raw, sub), exist_ok=True)
    for n in ids:
        image, label = make_case(rng, shape)
        label = SYNTHETIC_TO_BTCV[label]
        label[0, :3, :3] = BTCV_LABELS["esophagus"]
        label[-1, -4:, -4:] = BTCV_LABELS["pancreas"]
        write_volume(image, os.path.join(raw, "Training", "img", f"img{n:04d}.nii.gz"))
        write_volume(label, os.path.join(raw, "Training", "label", f"label{n:04d}.nii.gz"))
    write_volume(make_case(rng, shape)[0], os.path.join(raw, "Testing", "img", "img0061.nii.gz"))  # no label
    return raw


def convert_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert"] + argv)
    return args.func(args)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


@pytest.fixture(scope="module")
def btcv(tmp_path_factory):
    return write_btcv_fixture(str(tmp_path_factory.mktemp("download")))


def test_paper_split_8_organs(btcv, tmp_path):
    out = str(tmp_path / "raw")
    assert convert_cli(["synapse", btcv, "--out", out]) == 0
    ds = os.path.join(out, "Dataset701_Synapse")
    dataset = json.load(open(os.path.join(ds, "dataset.json")))
    assert dataset["labels"] == SYNAPSE8_LABELS and dataset["numTraining"] == 30
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert list(SYNAPSE8_LABELS)[1:] == ["aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas",
                                         "spleen", "stomach"]  # the paper's Table 1 column order
    splits = json.load(open(os.path.join(ds, "splits_final.json")))
    assert splits == [{"train": [f"case{n:04d}" for n in sorted(TRANSUNET_TRAIN_IDS)],
                       "val": [f"case{n:04d}" for n in sorted(TRANSUNET_TEST_IDS)]}]
    assert len(os.listdir(os.path.join(ds, "imagesTr"))) == 30
    assert sorted(os.listdir(os.path.join(ds, "labelsTs"))) == [f"case{n:04d}.nii.gz"
                                                                for n in sorted(TRANSUNET_TEST_IDS)]
    assert sorted(os.listdir(os.path.join(ds, "imagesTs"))) == [f"case{n:04d}_0000.nii.gz"
                                                                for n in sorted(TRANSUNET_TEST_IDS)]
    # voxel-wise: every BTCV organ lands on its 8-organ value, the five others on background
    source = read(os.path.join(btcv, "Training", "label", "label0008.nii.gz"))
    converted = read(os.path.join(ds, "labelsTs", "case0008.nii.gz"))
    for organ, value in SYNAPSE8_LABELS.items():
        assert np.array_equal(converted == value, source == BTCV_LABELS[organ]) or organ == "background"
    assert converted[source == BTCV_LABELS["esophagus"]].max() == 0
    assert np.array_equal(read(os.path.join(ds, "imagesTr", "case0008_0000.nii.gz")),
                          read(os.path.join(btcv, "Training", "img", "img0008.nii.gz")))
    label = sitk.ReadImage(os.path.join(ds, "labelsTr", "case0005.nii.gz"))
    assert np.allclose(label.GetSpacing(), SPACING_XYZ) and label.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    assert not [d for d in os.listdir(out) if d.startswith(".")]  # no temporary folder left


def test_rerun_is_a_no_op_and_a_different_dataset_is_refused(btcv, tmp_path, capsys):
    out = str(tmp_path / "raw")
    convert_synapse([btcv], out)
    ds = os.path.join(out, "Dataset701_Synapse")
    stamp = os.stat(os.path.join(ds, "dataset.json")).st_mtime_ns
    assert convert_synapse([btcv], out).status == "unchanged"
    assert "nothing to do" in capsys.readouterr().out
    assert os.stat(os.path.join(ds, "dataset.json")).st_mtime_ns == stamp
    with pytest.raises(ConversionError, match="already holds dataset 701.*--overwrite"):
        convert_synapse([btcv], out, labels="13", dataset_id=701)
    os.remove(os.path.join(ds, "labelsTs", "case0001.nii.gz"))  # a damaged conversion is not "identical"
    with pytest.raises(ConversionError, match="changed after conversion"):
        convert_synapse([btcv], out)
    result = convert_synapse([btcv], out, labels="13", split="cv5", dataset_id=701, overwrite=True)
    assert result.status == "replaced" and os.listdir(out) == ["Dataset701_Synapse13CV"]  # old one gone
    ds = result.dataset_dir
    dataset = json.load(open(os.path.join(ds, "dataset.json")))
    assert dataset["labels"] == BTCV_LABELS and not os.path.exists(os.path.join(ds, "splits_final.json"))
    assert not os.path.exists(os.path.join(ds, "imagesTs"))
    assert np.array_equal(read(os.path.join(ds, "labelsTr", "case0003.nii.gz")),
                          read(os.path.join(btcv, "Training", "label", "label0003.nii.gz")))


def test_zip_download_and_cv5_defaults(btcv, tmp_path):
    archive = str(tmp_path / "RawData.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for folder, _, files in os.walk(btcv):
            for f in files:
                path = os.path.join(folder, f)
                z.write(path, os.path.relpath(path, os.path.dirname(btcv)))
    result = convert_synapse([archive], str(tmp_path / "raw"), split="cv5")
    assert os.path.basename(result.dataset_dir) == "Dataset702_SynapseCV" and result.num_train == 30
    assert not os.path.exists(os.path.join(result.dataset_dir, "splits_final.json"))


def test_broken_download_reports_every_problem_and_writes_nothing(tmp_path):
    raw = write_btcv_fixture(str(tmp_path / "download"), ids=[1, 2, 3, 4, 5, 6], shape=(3, 16, 16))
    training = os.path.join(raw, "Training")
    os.remove(os.path.join(training, "label", "label0002.nii.gz"))  # missing pair
    write_volume(np.zeros((3, 16, 12), np.uint8), os.path.join(training, "label", "label0003.nii.gz"))  # shape
    write_volume(np.zeros((3, 16, 16), np.uint8), os.path.join(training, "label", "label0004.nii.gz"),
                 (1.0, 1.0, 3.0))  # spacing
    bad = np.zeros((3, 16, 16), np.uint8)
    bad[1, 5, 5] = 14
    write_volume(bad, os.path.join(training, "label", "label0005.nii.gz"))  # a label value BTCV does not have
    truncated = os.path.join(training, "img", "img0006.nii.gz")  # a download that broke off
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    out = str(tmp_path / "raw")
    with pytest.raises(ConversionError) as info:
        convert_synapse([raw], out, split="cv5")
    message = str(info.value)
    assert "img0002.nii.gz: has no label file label0002.nii.gz" in message
    assert "shape mismatch between image (16, 16, 3) and label (12, 16, 3)" in message
    assert "spacing mismatch" in message and "label0004.nii.gz" in message
    assert "img0006.nii.gz: cannot be read completely" in message and "truncated" in message
    assert os.listdir(out) == []  # nothing written, no temporary folder
    os.remove(truncated)
    write_volume(make_case(np.random.default_rng(6), (3, 16, 16))[0], truncated)
    os.remove(os.path.join(training, "img", "img0002.nii.gz"))
    for n in (3, 4):
        os.remove(os.path.join(training, "img", f"img{n:04d}.nii.gz"))
        os.remove(os.path.join(training, "label", f"label{n:04d}.nii.gz"))
    for n in (7, 8):  # enough cases for 5 folds, so that the only problem left is found while writing
        write_volume(make_case(np.random.default_rng(n), (3, 16, 16))[0], os.path.join(training, "img",
                                                                                       f"img{n:04d}.nii.gz"))
        write_volume(np.zeros((3, 16, 16), np.uint8), os.path.join(training, "label", f"label{n:04d}.nii.gz"))
    with pytest.raises(ConversionError, match=r"label0005.nii.gz: unexpected label values \[14\]"):
        convert_synapse([raw], out, split="cv5")
    assert os.listdir(out) == []
    with pytest.raises(ConversionError, match="needs all 30 BTCV training cases"):
        convert_synapse([raw], out)


def test_missing_input_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        convert_synapse([str(tmp_path / "nowhere")], str(tmp_path / "raw"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no BTCV training folder"):
        convert_synapse([str(tmp_path / "empty")], str(tmp_path / "raw"))
    with pytest.raises(ValueError, match="--labels must be 8"):
        convert_synapse([str(tmp_path / "empty")], str(tmp_path / "raw"), labels="9")


def write_transunet_fixture(root, shape=(3, 16, 16), seed=1):
    """TransUNet's preprocessed layout: train_npz/caseXXXX_sliceYYY.npz and test_vol_h5/caseXXXX.npy.h5."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    volumes = {}
    os.makedirs(os.path.join(root, "train_npz"))
    os.makedirs(os.path.join(root, "test_vol_h5"))
    for n in TRANSUNET_TRAIN_IDS + TRANSUNET_TEST_IDS:
        image = rng.random(shape).astype(np.float32)
        label = rng.integers(0, 9, shape).astype(np.float32)
        volumes[n] = (image, label)
        if n in TRANSUNET_TRAIN_IDS:
            for z in range(shape[0]):
                np.savez(os.path.join(root, "train_npz", f"case{n:04d}_slice{z:03d}.npz"), image=image[z],
                         label=label[z])
        else:
            with h5py.File(os.path.join(root, "test_vol_h5", f"case{n:04d}.npy.h5"), "w") as f:
                f.create_dataset("image", data=image)
                f.create_dataset("label", data=label)
    return volumes


def test_transunet_npz_h5_layout(tmp_path):
    volumes = write_transunet_fixture(str(tmp_path / "Synapse"))
    result = convert_synapse([str(tmp_path / "Synapse")], str(tmp_path / "raw"))
    ds = result.dataset_dir
    assert os.path.basename(ds) == "Dataset705_SynapseTransUNet" and result.num_train == 30 and result.num_test == 12
    dataset = json.load(open(os.path.join(ds, "dataset.json")))
    assert dataset["channel_names"] == {"0": "noNorm"} and dataset["labels"] == SYNAPSE8_LABELS
    for n, split in ((5, "Tr"), (1, "Ts")):  # slices restacked in order / h5 volume as it is
        image = sitk.ReadImage(os.path.join(ds, f"images{split}", f"case{n:04d}_0000.nii.gz"))
        assert image.GetSpacing() == (1.0, 1.0, 1.0)
        assert np.allclose(sitk.GetArrayFromImage(image), volumes[n][0])
        assert np.array_equal(read(os.path.join(ds, f"labels{split}", f"case{n:04d}.nii.gz")), volumes[n][1])
    with pytest.raises(ValueError, match="only the 8 organs"):
        convert_synapse([str(tmp_path / "Synapse")], str(tmp_path / "raw"), labels="13")


def test_transunet_layout_with_a_missing_slice(tmp_path):
    write_transunet_fixture(str(tmp_path / "Synapse"))
    os.remove(os.path.join(tmp_path, "Synapse", "train_npz", "case0009_slice001.npz"))
    os.remove(os.path.join(tmp_path, "Synapse", "test_vol_h5", "case0038.npy.h5"))
    with pytest.raises(ConversionError) as info:
        convert_synapse([str(tmp_path / "Synapse")], str(tmp_path / "raw"))
    assert "case0009_slice*.npz: slices [1] are missing" in str(info.value)
    assert "case0038.npy.h5: missing in test_vol_h5/" in str(info.value)
    assert os.listdir(tmp_path / "raw") == []
