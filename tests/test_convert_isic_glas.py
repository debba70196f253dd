"""`convert isic2017 / isic2018 / glas` on tiny fixtures in the official layouts (JPEG + PNG masks, BMP + instance
annotations), written as nnU-Net natural-image datasets (one RGB PNG per case, NaturalImage2DIO); broken inputs."""
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from danie_nnunet.convert.glas import convert_glas
from danie_nnunet.convert.isic2017 import FOLDERS, convert_isic2017
from danie_nnunet.convert.isic2018 import IMAGES, MASKS, bcdu_split, convert_isic2018
from danie_nnunet.convert.validation import ConversionError


def lesion(rng, h=24, w=32):
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: w // 2 + rng.integers(1, w // 4)] = 255
    return image, mask


def write_isic2017_fixture(root, counts=(3, 2, 2), as_zips=True):
    """The six official folders (or zips of them), with _superpixels.png and a metadata CSV beside the images."""
    rng = np.random.default_rng(0)
    number = 0
    for (data, gt), count in zip(FOLDERS.values(), counts):
        os.makedirs(os.path.join(root, data))
        os.makedirs(os.path.join(root, gt))
        with open(os.path.join(root, data, f"{data}_metadata.csv"), "w") as f:
            f.write("image_id,age_approximate,sex\n")
        for _ in range(count):
            case = f"ISIC_{number:07d}"
            number += 1
            image, mask = lesion(rng)
            Image.fromarray(image).save(os.path.join(root, data, f"{case}.jpg"), quality=95)
            Image.fromarray(image).save(os.path.join(root, data, f"{case}_superpixels.png"))
            Image.fromarray(mask).save(os.path.join(root, gt, f"{case}_segmentation.png"))
    if as_zips:
        for name in [n for pair in FOLDERS.values() for n in pair]:
            with zipfile.ZipFile(os.path.join(root, f"{name}.zip"), "w") as z:
                for f in sorted(os.listdir(os.path.join(root, name))):
                    z.write(os.path.join(root, name, f), f"{name}/{f}")
            for f in os.listdir(os.path.join(root, name)):
                os.remove(os.path.join(root, name, f))
            os.rmdir(os.path.join(root, name))
    return root


def test_isic2017_from_the_official_zips(tmp_path):
    source = write_isic2017_fixture(str(tmp_path / "download"))
    result = convert_isic2017([source], str(tmp_path / "raw"))
    ds = result.dataset_dir
    assert os.path.basename(ds) == "Dataset721_ISIC2017" and result.num_train == 5 and result.num_test == 2
    dataset = json.load(open(os.path.join(ds, "dataset.json")))
    # nnU-Net's natural-image convention (Dataset120_RoadSegmentation): one RGB png, channels R, G, B
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dataset["file_ending"] == ".png"
    assert dataset["labels"] == {"background": 0, "lesion": 1} and dataset["danie_benchmark"] == "isic2017"
    assert sorted(os.listdir(os.path.join(ds, "imagesTr"))) == [f"ISIC_{n:07d}_0000.png" for n in range(5)]
    assert json.load(open(os.path.join(ds, "splits_final.json"))) == [
        {"train": ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"], "val": ["ISIC_0000003", "ISIC_0000004"]}]
    image = np.asarray(Image.open(os.path.join(ds, "imagesTs", "ISIC_0000005_0000.png")))
    label = np.asarray(Image.open(os.path.join(ds, "labelsTs", "ISIC_0000005.png")))
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert label.shape == (24, 32) and set(np.unique(label)) == {0, 1}
    assert any("the official ISIC 2017 train set has 2000" in n for n in result.notes)
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO  # nnU-Net reads what we wrote
    data, props = NaturalImage2DIO().read_images([os.path.join(ds, "imagesTr", "ISIC_0000000_0000.png")])
    seg, _ = NaturalImage2DIO().read_seg(os.path.join(ds, "labelsTr", "ISIC_0000000.png"))
    assert data.shape == (3, 1, 24, 32) and seg.shape == (1, 1, 24, 32)


def test_isic2017_cv5_and_broken_masks(tmp_path):
    source = write_isic2017_fixture(str(tmp_path / "download"), as_zips=False)
    result = convert_isic2017([source], str(tmp_path / "raw"), split="cv5")
    assert os.path.basename(result.dataset_dir) == "Dataset722_ISIC2017CV"
    assert not os.path.exists(os.path.join(result.dataset_dir, "splits_final.json"))
    train_gt = os.path.join(source, FOLDERS["train"][1])
    grey = np.full((24, 32), 128, np.uint8)
    Image.fromarray(grey).save(os.path.join(train_gt, "ISIC_0000000_segmentation.png"))  # not a 0/255 mask
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(os.path.join(train_gt, "ISIC_0000001_segmentation.png"))
    os.remove(os.path.join(source, FOLDERS["test"][1], "ISIC_0000006_segmentation.png"))
    out = str(tmp_path / "raw2")
    with pytest.raises(ConversionError) as info:
        convert_isic2017([source], out)
    message = str(info.value)
    assert "ISIC_0000001.jpg / ISIC_0000001_segmentation.png: shape mismatch between image 24x32 and mask 20x32" \
           in message
    assert "ISIC_0000006.jpg: has no mask" in message
    assert os.listdir(out) == []
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(os.path.join(train_gt, "ISIC_0000001_segmentation.png"))
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(os.path.join(source, FOLDERS["test"][1],
                                                                    "ISIC_0000006_segmentation.png"))
    with pytest.raises(ConversionError, match=r"ISIC_0000000_segmentation.png: has unexpected values \[128\]"):
        convert_isic2017([source], out)
    assert os.listdir(out) == []


def test_isic2018_bcdu_split():
    ids = [f"ISIC_{n:07d}" for n in range(2594)]
    train, val, test, note = bcdu_split(list(reversed(ids)))
    assert (len(train), len(val), len(test), note) == (1815, 259, 520, None)
    assert train[0] == ids[0] and val[0] == ids[1815] and test[-1] == ids[-1]  # sorted order
    train, val, test, note = bcdu_split(ids[:20])
    assert (len(train), len(val), len(test)) == (14, 2, 4) and "not the paper's split" in note


def test_isic2018(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "download"
    (root / IMAGES).mkdir(parents=True)
    (root / MASKS).mkdir()
    (root / IMAGES / "ATTRIBUTION.txt").write_text("isic")
    for n in range(20):
        image, mask = lesion(rng)
        Image.fromarray(image).save(root / IMAGES / f"ISIC_{n:07d}.jpg")
        Image.fromarray(mask).save(root / MASKS / f"ISIC_{n:07d}_segmentation.png")
    result = convert_isic2018([str(root)], str(tmp_path / "raw"))
    assert os.path.basename(result.dataset_dir) == "Dataset723_ISIC2018"
    assert (result.num_train, result.num_test) == (16, 4) and any("not the paper's split" in n for n in result.notes)
    (fold,) = json.load(open(os.path.join(result.dataset_dir, "splits_final.json")))
    assert fold["val"] == ["ISIC_0000014", "ISIC_0000015"]
    assert sorted(os.listdir(os.path.join(result.dataset_dir, "labelsTs")))[0] == "ISIC_0000016.png"
    os.remove(root / MASKS / "ISIC_0000003_segmentation.png")
    with pytest.raises(ConversionError, match=r"ISIC_0000003.jpg: has no mask"):
        convert_isic2018([str(root)], str(tmp_path / "raw2"))
    with pytest.raises(ValueError, match=f"no {MASKS} folder found in the input"):
        convert_isic2018([str(root / IMAGES)], str(tmp_path / "raw2"))
    assert os.listdir(tmp_path / "raw2") == []


def write_glas_fixture(root):
    rng = np.random.default_rng(2)
    folder = os.path.join(root, "Warwick QU Dataset (Released 2016_07_08)")
    os.makedirs(folder)
    with open(os.path.join(folder, "Grade.csv"), "w") as f:
        f.write("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\n")
    for subset, count in (("train", 4), ("testA", 2), ("testB", 1)):
        for n in range(1, count + 1):
            image = rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)
            anno = np.zeros((20, 28), np.uint8)
            anno[2:8, 2:10], anno[10:18, 12:26] = 1, 2 + n  # two glands, instance ids
            Image.fromarray(image).save(os.path.join(folder, f"{subset}_{n}.bmp"))
            Image.fromarray(anno).save(os.path.join(folder, f"{subset}_{n}_anno.bmp"))
    return folder


def test_glas_instances_binarised(tmp_path):
    folder = write_glas_fixture(str(tmp_path / "download"))
    result = convert_glas([str(tmp_path / "download")], str(tmp_path / "raw"))
    ds = result.dataset_dir
    assert os.path.basename(ds) == "Dataset731_GlaS" and (result.num_train, result.num_test) == (4, 3)
    assert not os.path.exists(os.path.join(ds, "splits_final.json"))  # paper: train `all`; or nnU-Net's 5 folds
    assert sorted(os.listdir(os.path.join(ds, "labelsTs"))) == ["testA_1.png", "testA_2.png", "testB_1.png"]
    label = np.asarray(Image.open(os.path.join(ds, "labelsTr", "train_2.png")))
    anno = np.asarray(Image.open(os.path.join(folder, "train_2_anno.bmp")))
    assert np.array_equal(label, (anno > 0).astype(np.uint8))
    assert np.array_equal(np.asarray(Image.open(os.path.join(ds, "imagesTr", "train_2_0000.png"))),
                          np.asarray(Image.open(os.path.join(folder, "train_2.bmp"))))
    os.remove(os.path.join(folder, "testB_1_anno.bmp"))
    with pytest.raises(ConversionError, match=r"testB_1.bmp: has no annotation"):
        convert_glas([str(tmp_path / "download")], str(tmp_path / "raw2"))
