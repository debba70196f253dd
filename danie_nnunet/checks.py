"""Input checks for what nnU-Net lets through silently or answers with a deep traceback (docs/reliability.md).

nnU-Net's `nnUNetv2_plan_and_preprocess --verify_dataset_integrity` already checks label values, image/label
shape and spacing, NaN voxels and the number of training cases, with clear messages; these checks cover the
rest: dataset.json keys that end in a KeyError, Inf voxels, RGB/RGBA/vector and 4D files that nnU-Net reads
with the wrong axes or channel count, non-positive spacings, constant images, files with another ending (which
nnU-Net ignores without a word) and missing channel files. Images are read with SimpleITK, the reader nnU-Net
uses for NIfTI/NRRD/MHA; PNG/BMP/TIF are 2D natural images whose colour components are channels, as in
nnU-Net's NaturalImage2DIO.

    danie-nnunet check-dataset $nnUNet_raw/Dataset123_Name      # before nnUNetv2_plan_and_preprocess
    danie-nnunet check-images INPUT_FOLDER --model MODEL_FOLDER  # before nnUNetv2_predict
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
NIFTI_ENDINGS = (".nii", ".nii.gz")
CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


class DatasetError(ValueError):
    """A dataset.json or image that DANIE/nnU-Net cannot use; the message says what to fix."""


@dataclass(frozen=True)
class Finding:
    severity: str  # "error": training/prediction would fail or be wrong; "warning": works, but check it
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.path}: {self.message}"


def dataset_json_problems(dataset_json: dict) -> List[str]:
    """What is wrong with a dataset.json for nnU-Net + DANIE (empty list: nothing)."""
    if not isinstance(dataset_json, dict):
        return [f"dataset.json must hold a JSON object, got {type(dataset_json).__name__}"]
    problems = []
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        problems.append('no "labels": add e.g. "labels": {"background": 0, "liver": 1} (one entry per class, '
                        'background 0, then 1, 2, ... without gaps)')
    else:
        values = {name: v for name, v in labels.items() if name != "ignore"}
        if any(isinstance(v, (list, tuple)) for v in values.values()):
            problems.append("region labels (lists of label values) are not supported by DANIE; use one integer "
                            "per class")
        elif not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            problems.append(f'"labels" values must be integers, got {values}')
        else:
            found = sorted(values.values())
            if found != list(range(len(found))):
                problems.append(f'"labels" values must be 0, 1, ..., N-1 without gaps or repeats (0 = background); '
                                f'got {found}')
            elif len(found) < 2:
                problems.append('"labels" has no foreground class: add at least one label besides background 0')
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        problems.append('no input channels: "channel_names" must name each channel, e.g. {"0": "CT"} '
                        '(files case_0000, case_0001, ... in that order)')
    if not dataset_json.get("file_ending"):
        problems.append('no "file_ending": add e.g. "file_ending": ".nii.gz"')
    return problems


def check_dataset_json(dataset_json: dict, source: str = "dataset.json") -> None:
    """Raise DatasetError listing every problem of `dataset_json`."""
    problems = dataset_json_problems(dataset_json)
    if problems:
        raise DatasetError(f"{source} cannot be used:\n  - " + "\n  - ".join(problems))


def num_channels(dataset_json: dict) -> int:
    return len(dataset_json.get("channel_names", dataset_json.get("modality")) or {})


def _reason(error: Exception) -> str:
    """The informative line of a SimpleITK/nibabel error, without ITK's object addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((l for l in lines if "ITK ERROR" in l), lines[-1] if lines else type(error).__name__)
    return re.sub(r"^.*ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", line)[:200]


def check_image(path: str, channels: Optional[int] = 1, constant_warning: bool = True) -> List[Finding]:
    """Check one image file that nnU-Net will read; `channels`: how many input channels this file must hold
    (1 for NIfTI & co., one file per channel; 3 for an RGB PNG dataset), None to not check."""
    if not os.path.isfile(path):
        return [Finding("error", path, "does not exist")]
    voxels = None
    if path.lower().endswith(NIFTI_ENDINGS):
        # SimpleITK (ITK 5.4), nnU-Net's NIfTI reader, fills a truncated file with zeros and reads NaN/Inf as 0,
        # both without a word; nibabel reads the data exactly and fails on a short file
        import nibabel
        try:
            voxels = np.asanyarray(nibabel.load(path).dataobj)
        except Exception as e:  # nibabel raises several types for damaged files
            return [Finding("error", path, f"cannot be read completely ({_reason(e)}): the file is truncated or "
                                           f"damaged (SimpleITK would silently fill the rest with zeros); export "
                                           f"it again")]
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        return [Finding("error", path, f"cannot be read ({_reason(e)}): the file is truncated or not an image; "
                                       f"export it again")]
    findings = []
    natural = path.lower().endswith(NATURAL_IMAGE_ENDINGS)
    components = image.GetNumberOfComponentsPerPixel()
    if natural:
        held = components
        if components in (2, 4):
            findings.append(Finding("error", path, f"has an alpha channel ({components} components: "
                                                   f"{'gray+alpha' if components == 2 else 'RGBA'}); nnU-Net reads "
                                                   f"it as {components} channels. Save it without alpha, e.g. "
                                                   f"PIL.Image.open(f).convert('{'L' if components == 2 else 'RGB'}')"))
    elif components > 1:
        held = None
        findings.append(Finding("error", path, f"stores {components} values per voxel (an RGB or vector image); "
                                               f"nnU-Net's SimpleITK reader takes them for an image axis and "
                                               f"predicts nonsense without an error. Save one grayscale file per "
                                               f"channel (case_0000, case_0001, ...) or convert to grayscale"))
    elif image.GetDimension() == 4:
        held = image.GetSize()[3]
        if channels is not None and held != channels:
            findings.append(Finding("error", path, f"is 4D with {held} volumes (e.g. a time series); nnU-Net reads "
                                                   f"a 4D file as {held} input channels, but {channels} expected. "
                                                   f"Save the volume to segment as a 3D file"))
            held = None
    elif image.GetDimension() in (2, 3):
        held = 1
    else:
        held = None
        findings.append(Finding("error", path, f"has {image.GetDimension()} dimensions; nnU-Net reads 2D, 3D "
                                               f"and 4D (channels) images"))
    if held is not None and channels is not None and held != channels:
        findings.append(Finding("error", path, f"holds {held} channel(s), but {channels} expected (dataset.json "
                                               f"'channel_names')"))
    spacing = image.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        findings.append(Finding("error", path, f"has spacing {tuple(spacing)}; every spacing must be a positive "
                                               f"number: fix the header (in DICOM: Pixel Spacing / Spacing Between "
                                               f"Slices)"))
    values = voxels if voxels is not None else sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if n_nan or n_inf:
            how = ("SimpleITK, nnU-Net's NIfTI reader, silently reads them as 0; nnU-Net's NibabelIO keeps them and "
                   "the training loss becomes NaN" if voxels is not None else "nnU-Net's normalisation spreads them "
                   "over the whole image (training: NaN loss; prediction: a wrong segmentation)")
            findings.append(Finding("error", path, f"has {n_nan} NaN and {n_inf} Inf voxels ({how}). Replace them "
                                                   f"with a value that means something for the image, e.g. with "
                                                   f"numpy.nan_to_num, and export again"))
            return findings
    if constant_warning and values.dtype.names is None and values.size and values.min() == values.max():
        findings.append(Finding("warning", path, f"every voxel is {values.flat[0]}: there is nothing to segment "
                                                 f"(nnU-Net normalises it to zeros)"))
    return findings


def group_cases(folder: str, file_ending: str) -> Dict[str, Dict[int, str]]:
    """case id -> {channel index: path} for files named CASE_XXXX<file_ending>, as nnU-Net finds them."""
    cases: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(file_ending):
            match = CHANNEL_SUFFIX.search(name[: -len(file_ending)])
            if match:
                cases.setdefault(name[: match.start()], {})[int(match.group(1))] = os.path.join(folder, name)
    return cases


def check_case_folder(folder: str, dataset_json: dict) -> List[Finding]:
    """Check an imagesTr/imagesTs/prediction input folder against the dataset.json (or a model's)."""
    if not os.path.isdir(folder):
        return [Finding("error", folder, "is not a folder")]
    file_ending, n_channels = dataset_json["file_ending"], num_channels(dataset_json)
    findings = []
    ignored = [n for n in sorted(os.listdir(folder)) if not n.startswith(".") and not n.endswith(file_ending)
               and os.path.isfile(os.path.join(folder, n))]
    if ignored:
        findings.append(Finding("error", folder, f"{len(ignored)} file(s) do not end in {file_ending!r} and are "
                                                 f"ignored by nnU-Net without a message: {ignored[:5]}. Convert "
                                                 f"them to {file_ending} (dataset.json 'file_ending')"))
    unnamed = [n for n in sorted(os.listdir(folder)) if n.endswith(file_ending)
               and not CHANNEL_SUFFIX.search(n[: -len(file_ending)])]
    if unnamed:
        findings.append(Finding("error", folder, f"{len(unnamed)} file(s) lack the channel suffix _0000 and are "
                                                 f"ignored by nnU-Net: {unnamed[:5]}. Name them CASE_0000"
                                                 f"{file_ending}, CASE_0001{file_ending}, ..."))
    cases = group_cases(folder, file_ending)
    if not cases and not ignored and not unnamed:
        findings.append(Finding("error", folder, f"has no images (CASE_0000{file_ending})"))
    natural = file_ending.lower().endswith(NATURAL_IMAGE_ENDINGS)
    for case, files in cases.items():
        # RGB natural images hold all channels in one file, as in nnU-Net's NaturalImage2DIO
        one_file = natural and len(files) == 1
        expected = [0] if one_file else list(range(n_channels))
        missing, extra = sorted(set(expected) - set(files)), sorted(set(files) - set(expected))
        if missing or extra:
            findings.append(Finding("error", os.path.join(folder, case), f"channel files {sorted(files)} found, "
                                                                         f"{expected} expected (dataset.json "
                                                                         f"'channel_names' has {n_channels})"))
        for index in sorted(set(files) & set(expected)):
            findings += check_image(files[index], n_channels if one_file else 1)
    return findings


def load_dataset_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e})") from None


def check_dataset(folder: str) -> List[Finding]:
    """Check a dataset in nnU-Net's raw format (dataset.json, imagesTr, labelsTr, optional imagesTs)."""
    json_path = os.path.join(folder, "dataset.json")
    try:
        dataset_json = load_dataset_json(json_path)
    except DatasetError as e:
        return [Finding("error", json_path, str(e).replace(f"{json_path} ", ""))]
    problems = dataset_json_problems(dataset_json)
    if problems:
        return [Finding("error", json_path, p) for p in problems]
    findings = check_case_folder(os.path.join(folder, "imagesTr"), dataset_json)
    labels_folder = os.path.join(folder, "labelsTr")
    if os.path.isdir(os.path.join(folder, "imagesTr")):
        cases = group_cases(os.path.join(folder, "imagesTr"), dataset_json["file_ending"])
        unlabelled = [c for c in cases if not os.path.isfile(os.path.join(labels_folder, c + dataset_json["file_ending"]))]
        if unlabelled:
            findings.append(Finding("error", labels_folder, f"no label file for {len(unlabelled)} training case(s): "
                                                            f"{unlabelled[:5]} (expected CASE{dataset_json['file_ending']})"))
    if os.path.isdir(os.path.join(folder, "imagesTs")):
        findings += check_case_folder(os.path.join(folder, "imagesTs"), dataset_json)
    return findings


def _report(findings: List[Finding], what: str) -> int:
    for finding in findings:
        print(finding)
    errors = sum(f.severity == "error" for f in findings)
    print(f"{what}: {errors} error(s), {len(findings) - errors} warning(s)"
          + ("" if errors else " - OK"))
    return 1 if errors else 0


def cmd_check_dataset(args) -> int:
    code = _report(check_dataset(args.folder), args.folder)
    print("Also run `nnUNetv2_plan_and_preprocess -d ID --verify_dataset_integrity`: it checks label values and "
          "image/label geometry.")
    return code


def cmd_check_images(args) -> int:
    if args.model:
        dataset_json = load_dataset_json(os.path.join(args.model, "dataset.json"))
    else:
        dataset_json = {"file_ending": args.file_ending, "channel_names": {str(i): str(i) for i in range(args.channels)}}
    findings = []
    for path in args.inputs:
        if os.path.isdir(path):
            findings += check_case_folder(path, dataset_json)
        else:  # one file per channel, except RGB natural images (all channels in one file)
            natural = path.lower().endswith(NATURAL_IMAGE_ENDINGS)
            findings += check_image(path, num_channels(dataset_json) if natural else 1)
    return _report(findings, ", ".join(args.inputs))


def register(subparsers) -> None:
    """Add the `check-dataset` and `check-images` subcommands to danie-nnunet's parser."""
    p = subparsers.add_parser("check-dataset", help="check an nnU-Net raw dataset before planning/training "
                                                    "(dataset.json, Inf/NaN voxels, RGB/4D files, spacings, names)")
    p.add_argument("folder", help="the dataset folder: $nnUNet_raw/DatasetXXX_Name")
    p.set_defaults(func=cmd_check_dataset)
    p = subparsers.add_parser("check-images", help="check images before nnUNetv2_predict")
    p.add_argument("inputs", nargs="+", help="a prediction input folder (CASE_0000.nii.gz, ...) or image files")
    p.add_argument("--model", help="the trained model folder (its dataset.json gives file ending and channels)")
    p.add_argument("--channels", type=int, default=1, help="input channels per case without --model (default 1)")
    p.add_argument("--file-ending", default=".nii.gz", help="file ending without --model (default .nii.gz)")
    p.set_defaults(func=cmd_check_images)
