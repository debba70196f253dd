"""DANIE configurations in nnU-Net plans, by nnU-Net's configuration inheritance.

`danie-nnunet plan DATASET --protocol ...` adds to `nnUNetPlans.json`:

- `2d_danie_native`: nnU-Net's 2d spacing and data, the patch rounded up to a multiple of 32, and a batch size
  that fits DANIE in the GPU memory given (the honest nnU-Net comparison);
- `2d_danie_p224` / `2d_danie_p256`: the paper's protocol (slices resized to 224x224, cost counted at 256x256):
  the in-plane spacing scaled per axis so that the median slice maps to 224 (256) pixels, patch 224 (256).

The batch size is the largest that DANIE's training memory estimate fits in 85 % of the GPU memory given, at most
nnU-Net's 5 % dataset cap. Where not even nnU-Net's minimum of 2 slices fits that way, or a larger `--batch-size`
is asked for, the notes give the segments the DANIE trainers will recompute in the backward pass to fit it on
such a card (`danie_nnunet/memory.py: plan_recompute`) and what that costs; a batch that does not fit even then
is refused (or, when asked for, warned about). The estimate is the uncompiled network's, so a batch fits with or
without `nnUNet_compile=f`; compiled (the trainers' default on CUDA) the network keeps less, and a compiling
trainer may recompute nothing where the notes list segments.

Each configuration inherits from `2d` and carries its whole `architecture` block (inheritance is a shallow
merge), so the stock `nnUNetv2_preprocess -c 2d_danie_p224`, `nnUNetv2_train DATASET 2d_danie_p224 FOLD -tr
DANIETrainer` and `nnUNetv2_predict -c 2d_danie_p224` work unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from danie_nnunet import __version__
from danie_nnunet.config import get_config
from danie_nnunet.memory import HEADROOM, budget_note, estimate_training_memory, plan_recompute
from danie_nnunet.network import plans_architecture
from danie_nnunet.patch_size import round_up_patch_size

PROTOCOL_SIZES = {"native": None, "paper224": 224, "paper256": 256}
CONFIGURATION_NAMES = {"native": "2d_danie_native", "paper224": "2d_danie_p224", "paper256": "2d_danie_p256"}
MARKER = "danie_nnunet"  # key in the configurations we write: we never touch one without it
MAX_DATASET_COVERED = 0.05  # nnU-Net's rule: one batch covers at most 5 % of the dataset's voxels
MIN_BATCH_SIZE = 2


class PlansError(RuntimeError):
    """The plans cannot take a DANIE configuration as asked."""


@dataclass
class PlanRequest:
    protocol: str
    variant: str = "L"
    gpu_memory_gib: float = 24.0
    batch_size: Optional[int] = None


def danie_configuration(plans: dict, dataset_json: dict, request: PlanRequest) -> Tuple[str, dict, List[str]]:
    """The configuration `request` asks for, derived from the plans' '2d' configuration: (name, dict, notes)."""
    if request.protocol not in PROTOCOL_SIZES:
        raise PlansError(f"unknown protocol {request.protocol!r}; use one of {sorted(PROTOCOL_SIZES)}")
    if "2d" not in plans["configurations"]:
        raise PlansError("the plans have no '2d' configuration: run nnUNetv2_plan_and_preprocess -d ID -c 2d first")
    name = CONFIGURATION_NAMES[request.protocol]
    base = PlansManager(plans).get_configuration("2d")
    spacing = [float(s) for s in base.spacing]
    median = [float(m) for m in base.median_image_size_in_voxels]
    target = PROTOCOL_SIZES[request.protocol]
    if target is None:
        new_spacing, patch = spacing, list(round_up_patch_size(base.patch_size))
        data_identifier = base.data_identifier  # same spacing: reuse nnU-Net's preprocessed 2d data
    else:
        new_spacing = [s * m / target for s, m in zip(spacing, median)]  # the median slice -> target pixels
        patch = [target, target]
        data_identifier = f"{plans['plans_name']}_{name}"
    new_median = [m * s / n for m, s, n in zip(median, spacing, new_spacing)]

    in_chans = len(dataset_json["channel_names"])
    classes = len(dataset_json["labels"])
    memory = estimate_training_memory(request.variant, patch, in_chans, classes)
    fits = memory.max_batch_size(request.gpu_memory_gib)
    n_slices = float(plans["original_median_shape_after_transp"][0]) * dataset_json["numTraining"]
    coverage_cap = max(MIN_BATCH_SIZE, round(MAX_DATASET_COVERED * n_slices * new_median[0] * new_median[1]
                                              / (patch[0] * patch[1])))
    notes = [f"{name} (inherits 2d): spacing {_fmt(spacing)} -> {_fmt(new_spacing)}, patch "
             f"{list(base.patch_size)} -> {patch}, data {data_identifier}"]
    budget = request.gpu_memory_gib * HEADROOM  # what the DANIE trainers plan for on such a card
    if request.batch_size is not None:
        batch_size, why = request.batch_size, "as asked"
    elif fits >= MIN_BATCH_SIZE:
        batch_size = min(fits, coverage_cap)
        why = (f"DANIE-{request.variant} estimate {memory.fixed_gib:.1f} + {memory.per_slice_gib:.3f} GiB/slice "
               f"fits {fits} in {request.gpu_memory_gib:g} GiB; nnU-Net's 5 % dataset cap {coverage_cap}")
    else:
        batch_size, why = MIN_BATCH_SIZE, f"nnU-Net's minimum; {fits} slices fit without recomputation"
    total = memory.total_gib(batch_size)
    if batch_size > fits:  # the trainers recompute segments in the backward pass until the batch fits
        plan = plan_recompute(request.variant, patch, in_chans, classes, batch_size, budget)
        if not plan.fits and request.batch_size is None:
            raise PlansError(f"DANIE-{request.variant} at {patch} does not fit in {request.gpu_memory_gib:g} GiB even "
                             f"at batch {batch_size} with every recomputable segment run again (estimate "
                             f"{plan.estimate.total_gib(batch_size):.1f} GiB, {HEADROOM:.0%} of the card planned "
                             f"for); give --gpu-memory or use --variant S or the paper224 protocol")
        total = plan.estimate.total_gib(batch_size)
        notes.append(f"{'warning: ' if not plan.fits else ''}batch {batch_size} exceeds the estimate for "
                     f"DANIE-{request.variant} without recomputation ({memory.total_gib(batch_size):.1f} GiB; "
                     f"{fits} slices fit in {request.gpu_memory_gib:g} GiB); uncompiled, the DANIE trainers plan for "
                     f"it on such a card: {budget_note(plan)}")
    notes.append(f"batch size {base.batch_size} -> {batch_size} ({why}); estimated training memory {total:.1f} GiB")
    configuration = {
        "inherits_from": "2d",
        "data_identifier": data_identifier,
        "spacing": new_spacing,
        "median_image_size_in_voxels": new_median,
        "patch_size": patch,
        "batch_size": int(batch_size),
        "architecture": plans_architecture(get_config(request.variant), patch),
        MARKER: {"protocol": request.protocol, "variant": request.variant, "gpu_memory_gib": request.gpu_memory_gib,
                 "batch_size_requested": request.batch_size, "version": __version__},
    }
    return name, configuration, notes


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def preprocessed_folder(dataset: str) -> str:
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise PlansError(f"{e}; run nnUNetv2_plan_and_preprocess -d {dataset} -c 2d first") from None
    return os.path.join(str(nnUNet_preprocessed), name)


def add_danie_configurations(dataset: str, requests: List[PlanRequest], plans_name: str = "nnUNetPlans",
                             dry_run: bool = False) -> Dict[str, List[str]]:
    """Add or update the requested configurations in <nnUNet_preprocessed>/<dataset>/<plans_name>.json.

    Idempotent; refuses to overwrite a configuration it did not write; the plans file is replaced atomically
    and the original is kept once as <plans_name>.json.before_danie. Returns the notes per configuration.
    """
    folder = preprocessed_folder(dataset)
    plans_file = os.path.join(folder, f"{plans_name}.json")
    if not os.path.isfile(plans_file):
        raise PlansError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} -c 2d first")
    with open(plans_file) as f:
        plans = json.load(f)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    report, changed = {}, False
    for request in requests:
        name, configuration, notes = danie_configuration(plans, dataset_json, request)
        existing = plans["configurations"].get(name)
        if existing is not None and MARKER not in existing:
            raise PlansError(f"{plans_file} already has a configuration {name!r} that danie-nnunet did not write; "
                             f"refusing to overwrite it (rename or remove it first)")
        if existing == configuration:
            notes = [f"{name}: already up to date, nothing changed"]
        else:
            notes[0] = ("updated " if existing is not None else "added ") + notes[0]
            plans["configurations"][name] = configuration
            changed = True
        if request.protocol != "native":
            notes.append(f"preprocess: nnUNetv2_preprocess -d {dataset} -c {name} -plans_name {plans_name}")
        else:
            notes.append(f"no preprocessing needed: {name} uses the 2d data ({configuration['data_identifier']})")
        notes.append(f"train: nnUNetv2_train {dataset} {name} FOLD -tr DANIETrainer"
                     + ("" if plans_name == "nnUNetPlans" else f" -p {plans_name}"))
        report[name] = notes
    if changed and not dry_run:
        backup = plans_file + ".before_danie"
        if not os.path.exists(backup):
            shutil.copy2(plans_file, backup)
        tmp = plans_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(plans, f, indent=4, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, plans_file)
    return report
