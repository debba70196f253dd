"""Writing an nnU-Net raw dataset all-or-nothing, and idempotently.

Every converter hands `run_conversion` a `prepare(roots)` function that finds and validates the input and returns a
`ConversionPlan` (one job per case, dataset.json, splits). Nothing is written until the whole input is valid. The
dataset is built in a temporary folder inside nnUNet_raw and renamed into place, so an interrupted run never leaves
a half-converted `DatasetXXX_Name`. A manifest (`danie_conversion.json`) records the converter, its options and a
fingerprint of the input; re-running the same conversion is a no-op, a different dataset with the same id is
refused unless `overwrite`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .archive import is_archive, open_sources
from .validation import ConversionError

MANIFEST = "danie_conversion.json"
FORMAT_VERSION = 1


@dataclass
class CaseJob:
    """Writes one case into the staging dataset folder: `function(dataset_dir, *args)`, a module-level function
    (so that jobs can run in worker processes). It returns the problems it found in the case's files (those checks
    that need the voxels, e.g. label values), or None; any problem aborts the conversion before the commit."""

    case_id: str
    role: str  # "train" (imagesTr/labelsTr) or "test" (imagesTs/labelsTs)
    function: Callable[..., None]
    args: Tuple[Any, ...] = ()


@dataclass
class ConversionPlan:
    jobs: List[CaseJob]
    dataset_json: Dict[str, Any]
    splits: Optional[List[Dict[str, List[str]]]] = None  # written as splits_final.json; None: nnU-Net's 5-fold CV
    notes: List[str] = field(default_factory=list)  # printed after a successful conversion
    also_test: Sequence[str] = ()  # training cases also linked into imagesTs/labelsTs (the paper's test cases)


@dataclass
class ConversionResult:
    status: str  # "written", "unchanged" or "replaced"
    dataset_dir: str
    num_train: int = 0
    num_test: int = 0
    notes: List[str] = field(default_factory=list)


def resolve_raw_root(out: Optional[str]) -> str:
    root = out or os.environ.get("nnUNet_raw")
    if not root:
        raise ValueError("no output folder: pass --out NNUNET_RAW or set the nnUNet_raw environment variable")
    root = os.path.abspath(os.path.expanduser(root))
    os.makedirs(root, exist_ok=True)
    return root


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id {dataset_id} is outside nnU-Net's range 1..999")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def source_fingerprint(sources: Sequence[str], exclude: Optional[str] = None) -> str:
    """sha256 over the names and sizes of the input files (archives by name and size); contents are not read.
    Hidden files and `exclude` (the output folder, when it lies inside a source) are left out."""
    entries = []
    exclude = os.path.abspath(exclude) if exclude else None
    for source in sources:
        source = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(source):
            for folder, dirs, files in os.walk(source):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(folder, d) != exclude)
                for f in sorted(files):
                    if not f.startswith("."):
                        path = os.path.join(folder, f)
                        entries.append([os.path.relpath(path, source), os.path.getsize(path)])
        elif is_archive(source):
            entries.append([os.path.basename(source), os.path.getsize(source)])
        elif not os.path.exists(source):
            raise ValueError(f"{source} does not exist")
        else:
            raise ValueError(f"{source} is neither a folder nor an archive")
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _output_files(dataset_dir: str) -> Dict[str, int]:
    files = {}
    for folder, _, names in os.walk(dataset_dir):
        for f in names:
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, dataset_dir)
            if rel != MANIFEST:
                files[rel] = os.path.getsize(path)
    return files


def _existing_matches(dataset_dir: str, identity: Dict[str, Any]) -> Tuple[bool, str]:
    path = os.path.join(dataset_dir, MANIFEST)
    if not os.path.isfile(path):
        return False, "it was not written by danie-nnunet convert"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False, f"its {MANIFEST} is unreadable"
    if any(manifest.get(k) != v for k, v in identity.items()):
        return False, "it was converted from other input or with other options"
    if manifest.get("files") != _output_files(dataset_dir):
        return False, "its files were changed after conversion"
    return True, ""


def write_json(path: str, data: Any) -> None:
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def run_conversion(converter: str, sources: Sequence[str], out: Optional[str], dataset_id: int, name: str,
                   options: Dict[str, Any], prepare: Callable[[List[str]], ConversionPlan], overwrite: bool = False,
                   num_processes: int = 1) -> ConversionResult:
    """Convert `sources` into nnUNet_raw/Dataset<id>_<name> all-or-nothing; see the module docstring."""
    if not sources:
        raise ValueError("no input given: pass the downloaded folder(s) or archive(s)")
    raw_root = resolve_raw_root(out)
    folder = dataset_folder_name(dataset_id, name)
    target = os.path.join(raw_root, folder)
    identity = {"converter": converter, "format_version": FORMAT_VERSION, "options": options,
                "source_fingerprint": source_fingerprint(sources, exclude=raw_root)}
    existing = sorted(d for d in os.listdir(raw_root) if d.startswith(f"Dataset{int(dataset_id):03d}_")
                      and os.path.isdir(os.path.join(raw_root, d)))
    if existing == [folder]:
        same, why = _existing_matches(target, identity)
        if same:
            print(f"{target} is already this conversion of the same input; nothing to do.")
            return ConversionResult("unchanged", target)
    else:
        why = "" if not existing else "it has another name"
    if existing and not overwrite:
        raise ConversionError(
            f"nnUNet_raw already holds dataset {int(dataset_id):03d} ({', '.join(existing)}) and {why}. "
            f"Pass --overwrite to replace it, or --id to convert under another id.")

    prefix = f".danie-convert-{int(dataset_id):03d}-"
    for stale in sorted(d for d in os.listdir(raw_root) if d.startswith(prefix)):
        print(f"warning: {os.path.join(raw_root, stale)} was left by an interrupted conversion (or one still "
              f"running); delete it when none runs")
    workdir = tempfile.mkdtemp(prefix=prefix, dir=raw_root)
    try:
        roots = open_sources(sources, os.path.join(workdir, "sources"))
        plan = prepare(roots)
        staging = os.path.join(workdir, folder)
        _write_plan(plan, staging, num_processes)
        write_json(os.path.join(staging, MANIFEST), {**identity, "dataset": folder,
                                                     "files": _output_files(staging)})
        status = "written"
        for old in existing:  # --overwrite: move the old dataset aside, then rename the new one into place
            os.rename(os.path.join(raw_root, old), os.path.join(workdir, "replaced-" + old))
            status = "replaced"
        os.rename(staging, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    num_test = len({j.case_id for j in plan.jobs if j.role == "test"} | set(plan.also_test))
    result = ConversionResult(status, target, plan.dataset_json["numTraining"], num_test, plan.notes)
    print(f"{status} {target}: {result.num_train} training cases, {result.num_test} test cases"
          + (f", {len(plan.splits)} fold(s) in splits_final.json" if plan.splits
             else ", nnU-Net's own 5-fold CV (no splits file)"))
    for note in plan.notes:
        print(f"note: {note}")
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if status == "replaced" and preprocessed and os.path.isdir(preprocessed):
        stale = [d for d in os.listdir(preprocessed) if d.startswith(f"Dataset{int(dataset_id):03d}_")]
        if stale:
            print(f"warning: {preprocessed} still holds {', '.join(stale)} (plans and splits_final.json of the old "
                  f"dataset); delete it and run nnUNetv2_plan_and_preprocess again")
    return result



def run_split_conversion(converter: str, sources: Sequence[str], out: Optional[str], split: str,
                         dataset_id: Optional[int], name: Optional[str], default_ids: Dict[str, Tuple[int, str]],
                         prepare: Callable[[List[str], str], ConversionPlan], overwrite: bool = False,
                         num_processes: int = 1) -> ConversionResult:
    """run_conversion for a converter whose one option is --split paper|cv5, each with its default id and name."""
    if split not in ("paper", "cv5"):
        raise ValueError(f"--split must be paper or cv5, not {split}")
    default_id, default_name = default_ids[split]
    return run_conversion(converter, sources, out, dataset_id or default_id, name or default_name, {"split": split},
                          lambda roots: prepare(roots, split), overwrite, num_processes)

def _write_plan(plan: ConversionPlan, staging: str, num_processes: int) -> None:
    roles = {j.role for j in plan.jobs} | ({"test"} if plan.also_test else set())
    for role in roles:
        for kind in ("images", "labels"):
            os.makedirs(os.path.join(staging, kind + ("Tr" if role == "train" else "Ts")), exist_ok=True)
    desc = f"writing {os.path.basename(staging)}"
    problems: List[str] = []
    if num_processes > 1 and len(plan.jobs) > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            futures = [pool.submit(j.function, staging, *j.args) for j in plan.jobs]
            for fut in tqdm(futures, desc=desc, unit="case"):
                problems.extend(fut.result() or [])
    else:
        for job in tqdm(plan.jobs, desc=desc, unit="case"):
            problems.extend(job.function(staging, *job.args) or [])
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in the input files; nothing was written:", problems)
    ending = plan.dataset_json["file_ending"]
    for case in plan.also_test:
        for src, dst in ((f"imagesTr/{case}_0000{ending}", f"imagesTs/{case}_0000{ending}"),
                         (f"labelsTr/{case}{ending}", f"labelsTs/{case}{ending}")):
            link_or_copy(os.path.join(staging, src), os.path.join(staging, dst))
    write_json(os.path.join(staging, "dataset.json"), plan.dataset_json)
    if plan.splits is not None:
        write_json(os.path.join(staging, "splits_final.json"), plan.splits)


def case_paths(dataset_dir: str, role: str, case_id: str, ending: str) -> Tuple[str, str]:
    """(image of channel 0, label) paths of a case in the staging dataset."""
    suffix = "Tr" if role == "train" else "Ts"
    return (os.path.join(dataset_dir, f"images{suffix}", f"{case_id}_0000{ending}"),
            os.path.join(dataset_dir, f"labels{suffix}", f"{case_id}{ending}"))


def link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows it (same data twice for free), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_label_volume(array: np.ndarray, reference: sitk.Image, path: str) -> None:
    """A uint8 label volume with the geometry of `reference`."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    sitk.WriteImage(image, path, useCompression=True)


def dataset_json(channel_names: Dict[str, str], labels: Dict[str, int], num_training: int, file_ending: str,
                 name: str, description: str, benchmark: str, **extra: Any) -> Dict[str, Any]:
    """nnU-Net's dataset.json (what nnunetv2's generate_dataset_json writes) plus `danie_benchmark`, which
    `danie-nnunet evaluate` reads to pick the paper's table; nnU-Net ignores unknown keys."""
    return {"channel_names": channel_names, "labels": labels, "numTraining": num_training,
            "file_ending": file_ending, "name": name, "description": description,
            "danie_benchmark": benchmark, **extra}
