"""Real scans nobody here wrote, shipped by registry packages: predict with the input's geometry or fail clearly.

- pydicom-data (PyPI): CT and MR slices from scanners, JPEG-2000 compressed, flipped and oblique orientations,
  a 1024 x 1024 MR, a big-endian multi-frame MR, an enhanced multi-frame CT; an RGB ultrasound and a truncated
  file that must be refused.
- Debian's invesalius-examples: a real head CT (int16 HU, 0.957 x 0.957 x 1.5 mm, 108 x 256 x 256). Only 4
  slices from its middle are predicted, to keep CPU time down (the full volume is 108 slices of 25 tiles).
- nibabel's own test images: big-endian and non-RAS NIfTI, a tiny anisotropic volume, a 4D series (refused).

The packages are installed by .ci/run, never committed; nothing is downloaded here. A DICOM file is converted
to NIfTI with SimpleITK (the reader nnU-Net uses) and predicted with the shared tiny DANIE model.
"""
import os
import plistlib
import subprocess
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk

from danie_nnunet.checks import check_image
from reliability_helpers import assert_same_geometry, predict

pytestmark = pytest.mark.e2e


def missing(what, install):
    """Skip outside CI (with the install line); in CI a missing package is a broken install step: fail."""
    message = f"{what} is not installed: {install}"
    if os.environ.get("CI"):
        pytest.fail(message + " (.ci/run must install it)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def pydicom_data():
    try:
        from data_store import DataStore  # the pydicom-data package
    except ImportError:
        missing("pydicom-data", "pip install pydicom-data==1.0.0")
    return str(DataStore().data_path)


@pytest.fixture(scope="module")
def invesalius_project():
    try:
        files = subprocess.run(["dpkg", "-L", "invesalius-examples"], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        files = []
    projects = [f for f in files if f.endswith(".inv3") and os.path.isfile(f)]
    if not projects:
        missing("Debian's invesalius-examples", "apt-get install -y invesalius-examples")
    return projects[0]


def nibabel_data(name):
    import nibabel
    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", name)


def to_nifti(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def predict_and_check_geometry(trained, source: sitk.Image, tmp_path, name):
    """The scan as nnU-Net input (CASE_0000.nii.gz), checked, predicted; returns the prediction."""
    image_path = to_nifti(source, tmp_path / f"{name}_0000.nii.gz")
    assert [str(f) for f in check_image(image_path) if f.severity == "error"] == []
    prediction = sitk.ReadImage(predict(trained, image_path, str(tmp_path / "out")))
    assert_same_geometry(prediction, sitk.ReadImage(image_path))
    assert_same_geometry(prediction, source, atol=1e-3)  # also the scanner's geometry (NIfTI keeps float32)
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(range(6))
    return prediction


DICOM_PREDICTED = {  # file -> what makes it a test
    "693_J2KR.dcm": "CT, JPEG-2000 lossless, 512 x 512 at 0.48 mm",
    "MR2_J2KI.dcm": "MR, JPEG-2000 lossy, 1024 x 1024 at 0.2 mm, oblique orientation",
    "explicit_VR-UN.dcm": "CT, flipped orientation (y and z reversed), explicit VR UN elements",
    "emri_small_big_endian.dcm": "MR, big-endian transfer syntax, 10 frames",
    "eCT_Supplemental.dcm": "enhanced multi-frame CT, x and z flipped",
}


@pytest.mark.parametrize("name", sorted(DICOM_PREDICTED))
def test_pydicom_data_scans_predict_with_their_geometry(trained, pydicom_data, tmp_path, name):
    source = sitk.ReadImage(os.path.join(pydicom_data, name))
    assert source.GetNumberOfComponentsPerPixel() == 1
    predict_and_check_geometry(trained, source, tmp_path, name.split(".")[0].replace("-", "_"))


@pytest.mark.parametrize("name, message", [("US1_J2KR.dcm", "stores 3 values per voxel"),
                                           ("emri_small_jpeg_2k_lossless_too_short.dcm", "cannot be read")])
def test_pydicom_data_files_that_cannot_be_predicted_are_refused(pydicom_data, name, message):
    (finding,) = check_image(os.path.join(pydicom_data, name))
    assert finding.severity == "error" and message in finding.message


def read_invesalius_volume(project: str):
    """The CT matrix of an InVesalius project (.inv3: a tar.gz of plists and a raw array), read without extracting."""
    with tarfile.open(project, "r:gz") as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        main = plistlib.load(tar.extractfile(members["main.plist"]))
        matrix = main["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<")).reshape(matrix["shape"])
    return volume, tuple(main["spacing"]), main["modality"]


def test_invesalius_head_ct_predicts_with_its_geometry(trained, invesalius_project, tmp_path):
    volume, spacing, modality = read_invesalius_volume(invesalius_project)
    assert modality == "CT" and volume.dtype == np.int16 and volume.shape == (108, 256, 256)
    assert np.allclose(spacing, (0.957, 0.957, 1.5), atol=1e-3)
    assert volume.min() == -1024 and volume.max() > 1000  # Hounsfield units: air and bone
    middle = volume.shape[0] // 2
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume[middle - 2: middle + 2]))  # 4 slices
    image.SetSpacing(spacing)
    image.SetOrigin((0.0, 0.0, (middle - 2) * spacing[2]))
    prediction = predict_and_check_geometry(trained, image, tmp_path, "cranium")
    assert prediction.GetSize() == (256, 256, 4)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"])
def test_nibabel_test_images_predict_with_their_geometry(trained, tmp_path, name):
    import nibabel
    header = nibabel.load(nibabel_data(name)).header
    if name != "standard.nii.gz":
        assert header.endianness == ">"  # big-endian
    source = sitk.ReadImage(nibabel_data(name))
    predict_and_check_geometry(trained, source, tmp_path, name.split(".")[0])


def test_nibabel_4d_series_is_refused():
    (finding,) = check_image(nibabel_data("example4d.nii.gz"))
    assert finding.severity == "error" and "4D with 2 volumes" in finding.message
