"""A trained DANIE fold outside nnU-Net: rebuilt from its results folder, preprocessed like nnU-Net, and run by
sliding window.

`load_trained_fold` rebuilds the network from the run's plans.json (the 'architecture' block written by the DANIE
trainers) and loads fold_X/checkpoint_final.pth. `segment_volume` is a reference of nnU-Net's 2D inference
(normalise, resample in-plane, sliding window with Gaussian weights, argmax, back to the original grid) that runs
any patch function: the PyTorch network (`torch_runner`) or an exported model (`export.py`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .config import DANIEConfig
from .network import DANIE

NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
SIDECAR_VERSION = 1  # the JSON that describes an exported fold (TrainedFold.sidecar)
PatchFunction = Callable[[np.ndarray], np.ndarray]  # (B, C, h, w) float32 -> (B, K, h, w) logits


class TrainedModelError(ValueError):
    """A model folder, checkpoint or input that cannot be used, with what to do about it."""


# ---------------------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessing:
    """nnU-Net's preprocessing of one 2D configuration, as far as inference needs it.

    Axis order: arrays are (C, Z, Y, X) as SimpleITK reads them; `transpose_forward` permutes the spatial axes
    and the network sees slices along the first one. Each channel is normalised as nnU-Net does (CT: clip to the
    dataset's 0.5/99.5 percentiles, then z-score with the dataset's foreground mean/std; z-score: per image),
    then each slice is resampled in-plane to `spacing`. Differences from nnU-Net, all small for inference:
    bilinear instead of third-order spline resampling, no crop to the nonzero region, and for z-score with
    `use_mask_for_norm` the mask is "any channel != 0" instead of nnU-Net's hole-filled nonzero mask.
    """

    spacing: Tuple[float, float]
    transpose_forward: Tuple[int, int, int] = (0, 1, 2)
    transpose_backward: Tuple[int, int, int] = (0, 1, 2)
    normalization: Tuple[dict, ...] = ()

    @classmethod
    def from_plans(cls, plans: dict, configuration: dict) -> "Preprocessing":
        props = plans.get("foreground_intensity_properties_per_channel", {})
        norms = []
        for c, scheme in enumerate(configuration["normalization_schemes"]):
            if scheme not in NORMALIZATIONS:
                raise TrainedModelError(f"normalisation scheme {scheme!r} of channel {c} is not one of nnU-Net's "
                                        f"defaults {NORMALIZATIONS}; this reference preprocessing cannot apply it")
            entry = {"scheme": scheme, "use_mask": bool(configuration.get("use_mask_for_norm", [False] * (c + 1))[c])}
            if scheme == "CTNormalization":
                p = props.get(str(c)) or {}
                missing = {"mean", "std", "percentile_00_5", "percentile_99_5"} - set(p)
                if missing:
                    raise TrainedModelError(f"plans.json lacks the CT intensity properties {sorted(missing)} of "
                                            f"channel {c} (foreground_intensity_properties_per_channel)")
                entry.update(mean=float(p["mean"]), std=float(p["std"]),
                             clip=[float(p["percentile_00_5"]), float(p["percentile_99_5"])])
            norms.append(entry)
        spacing = [float(s) for s in configuration["spacing"]][-2:]
        return cls(tuple(spacing), tuple(plans.get("transpose_forward", (0, 1, 2))),
                   tuple(plans.get("transpose_backward", (0, 1, 2))), tuple(norms))

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(tuple(d["spacing"]), tuple(d["transpose_forward"]), tuple(d["transpose_backward"]),
                   tuple(d["normalization"]))

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "transpose_forward": list(self.transpose_forward),
                "transpose_backward": list(self.transpose_backward), "normalization": list(self.normalization)}

    def normalize(self, volume: np.ndarray) -> np.ndarray:
        """(C, ...) raw intensities -> normalised float32, per channel."""
        if volume.shape[0] != len(self.normalization):
            raise TrainedModelError(f"the model takes {len(self.normalization)} channel(s), the image has "
                                    f"{volume.shape[0]}: give one file per channel (_0000, _0001, ...)")
        out = np.empty(volume.shape, np.float32)
        nonzero = np.any(volume != 0, axis=0)
        for c, spec in enumerate(self.normalization):
            x = volume[c].astype(np.float32)
            scheme = spec["scheme"]
            if scheme == "CTNormalization":
                x = (np.clip(x, *spec["clip"]) - spec["mean"]) / max(spec["std"], 1e-8)
            elif scheme == "ZScoreNormalization":
                mask = nonzero if spec.get("use_mask") else np.ones(x.shape, bool)
                x = np.where(mask, (x - x[mask].mean()) / max(float(x[mask].std()), 1e-8), 0).astype(np.float32)
            elif scheme == "RescaleTo01Normalization":
                x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
            elif scheme == "RGBTo01Normalization":
                x = x / 255.0
            out[c] = x
        return out

    def apply(self, volume: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        """(C, Z, Y, X) raw image with its spacing -> (C, S, H, W) network input: S slices at the model's spacing."""
        if volume.ndim != 4:
            raise TrainedModelError(f"expected a (C, Z, Y, X) array, got shape {volume.shape}")
        volume = volume.transpose(0, *[a + 1 for a in self.transpose_forward])
        spacing = [float(spacing_zyx[a]) for a in self.transpose_forward][1:]
        x = torch.from_numpy(self.normalize(volume)).permute(1, 0, 2, 3)  # slices as a batch
        size = in_plane_size(x.shape[-2:], spacing, self.spacing)
        if tuple(size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.permute(1, 0, 2, 3).contiguous().numpy()

    def restore(self, labels: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
        """(S, H, W) labels on the network grid -> (Z, Y, X) on the original image grid (nearest neighbour)."""
        transposed = [int(shape_zyx[a]) for a in self.transpose_forward]
        t = torch.from_numpy(labels.astype(np.int64))[:, None].float()
        t = F.interpolate(t, size=transposed[1:], mode="nearest")[:, 0].to(torch.int64).numpy()
        return t.transpose(self.transpose_backward).astype(np.uint8 if labels.max() < 256 else np.int16)


def in_plane_size(size: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int]:
    """nnU-Net's new shape for resampling: round(old_spacing / new_spacing * old_shape), at least 1."""
    return tuple(max(1, int(round(s * sp / t))) for s, sp, t in zip(size, spacing, target))


def read_image(files: Sequence[str]) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """One nnU-Net raw case (one file per channel) -> (C, Z, Y, X) float32 and the spacing (z, y, x).

    A 2D file (e.g. PNG) becomes one slice with spacing 1; an RGB file gives three channels.
    """
    import SimpleITK as sitk
    arrays, spacing = [], None
    for f in files:
        if not os.path.isfile(f):
            raise TrainedModelError(f"image file {f!r} does not exist")
        img = sitk.ReadImage(f)
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        sp = tuple(float(s) for s in reversed(img.GetSpacing()))
        if img.GetNumberOfComponentsPerPixel() > 1:  # channels last (RGB)
            chans = [a[..., k] for k in range(a.shape[-1])]
        else:
            chans = [a]
        for a in chans:
            if a.ndim == 2:
                a, sp = a[None], (1.0,) + sp[-2:]
            arrays.append(a)
        spacing = spacing or sp
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise TrainedModelError(f"the channel files {list(files)} have different shapes {sorted(shapes)}")
    return np.stack(arrays), spacing


# ------------------------------------------------------------------------------------------ the trained fold
@dataclass
class TrainedFold:
    """A trained DANIE fold of an nnU-Net results folder, rebuilt without nnU-Net."""

    network: DANIE
    model_folder: str
    fold: str
    checkpoint: str
    configuration: str
    preprocessing: Preprocessing
    labels: Dict[str, int]
    channel_names: Dict[str, str]
    file_ending: str

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(self.network.img_size)

    @property
    def trainer_name(self) -> str:
        return os.path.basename(os.path.normpath(self.model_folder)).split("__")[0]

    def class_index(self, name_or_index: str) -> int:
        """A class given by its dataset.json name ('liver') or its integer label ('1')."""
        if str(name_or_index).lstrip("-").isdigit():
            index = int(name_or_index)
            if not 0 <= index < self.network.num_classes:
                raise TrainedModelError(f"class {index} out of range: the model has {self.network.num_classes} "
                                        f"classes ({self.class_names()})")
            return index
        if name_or_index not in self.labels:
            raise TrainedModelError(f"unknown class {name_or_index!r}; the classes are {self.class_names()}")
        return int(self.labels[name_or_index])

    def class_names(self) -> str:
        return ", ".join(f"{v}={k}" for k, v in sorted(self.labels.items(), key=lambda kv: kv[1]))

    def sidecar(self) -> dict:
        net = self.network
        return {"sidecar_version": SIDECAR_VERSION, "trainer": self.trainer_name, "fold": self.fold,
                "checkpoint": self.checkpoint, "configuration": self.configuration,
                "input": {"name": "image", "shape": ["batch", net.in_chans, *self.patch_size],
                          "patch_size": list(self.patch_size), "input_multiple": list(net.input_multiple)},
                "output": {"name": "logits", "shape": ["batch", net.num_classes, *self.patch_size],
                           "num_classes": net.num_classes},
                "labels": self.labels, "channel_names": self.channel_names, "file_ending": self.file_ending,
                "preprocessing": self.preprocessing.to_dict(), "danie_config": net.cfg.to_dict()}


def resolve_configuration(plans: dict, name: str) -> dict:
    """A configuration of plans.json with nnU-Net's 'inherits_from' chain applied."""
    configurations = plans.get("configurations", {})
    if name not in configurations:
        raise TrainedModelError(f"configuration {name!r} is not in plans.json; available: {sorted(configurations)}")
    conf = dict(configurations[name])
    if "inherits_from" in conf:
        parent = resolve_configuration(plans, conf.pop("inherits_from"))
        conf = {**parent, **conf}
    return conf


def load_trained_fold(model_folder: str, fold: str = "0", checkpoint: str = "checkpoint_final.pth",
                      configuration: str = "2d", device: str = "cpu") -> TrainedFold:
    """Rebuild the network of an nnU-Net results folder (Trainer__Plans__Config) and load one fold's checkpoint.

    nnU-Net checkpoints are pickles (they hold numpy scalars, the trainer's name, ...), so the checkpoint is read
    with torch.load(weights_only=False), as nnU-Net itself does: only point this at checkpoints you trust.
    """
    model_folder = os.path.abspath(model_folder)
    files = {name: os.path.join(model_folder, f"{name}.json") for name in ("plans", "dataset")}
    for name, path in files.items():
        if not os.path.isfile(path):
            raise TrainedModelError(f"{path} does not exist: give the nnU-Net results folder of a trained model "
                                    f"(nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>)")
    with open(files["plans"]) as f:
        plans = json.load(f)
    with open(files["dataset"]) as f:
        dataset = json.load(f)
    conf = resolve_configuration(plans, configuration)
    arch = conf.get("architecture", {})
    if arch.get("network_class_name") != "danie_nnunet.network.DANIE.from_plans":
        raise TrainedModelError(f"{files['plans']} configuration {configuration!r} describes the network "
                                f"{arch.get('network_class_name')!r}, not DANIE: this folder was not trained with a "
                                f"DANIE trainer")
    labels = dataset.get("labels", {})
    if any(not isinstance(v, int) for v in labels.values()):
        raise TrainedModelError("region-based models (dataset.json labels with lists) are not supported")
    in_chans = len(dataset.get("channel_names", dataset.get("modality", {}))) or 1
    fold_folder = os.path.join(model_folder, f"fold_{fold}")
    path = os.path.join(fold_folder, checkpoint)
    if not os.path.isfile(path):
        found = sorted(f for f in os.listdir(fold_folder) if f.endswith(".pth")) if os.path.isdir(fold_folder) else []
        raise TrainedModelError(f"checkpoint {path} does not exist (in fold_{fold}: {found or 'no checkpoints'}; "
                                f"folds here: {sorted(d for d in os.listdir(model_folder) if d.startswith('fold_'))})")
    kwargs = arch["arch_kwargs"]
    network = DANIE(DANIEConfig.from_dict(kwargs["config"]), kwargs["img_size"], in_chans, len(labels))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's checkpoint format, see above
    except Exception as e:  # truncated or not a checkpoint at all
        raise TrainedModelError(f"could not read {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                f"the file is truncated or not an nnU-Net checkpoint") from None
    weights = state.get("network_weights") if isinstance(state, dict) else None
    if weights is None:
        raise TrainedModelError(f"{path} is not an nnU-Net checkpoint (no 'network_weights')")
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in weights.items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        raise TrainedModelError(f"{path} does not fit the network described by plans.json: "
                                f"{str(e).splitlines()[0]}") from None
    network.to(device).eval()
    return TrainedFold(network, model_folder, str(fold), checkpoint, configuration,
                       Preprocessing.from_plans(plans, conf), labels, dict(dataset.get("channel_names", {})),
                       dataset.get("file_ending", ".nii.gz"))


# ------------------------------------------------------------------------------------------- sliding window
def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net's patch weighting: a Gaussian with sigma = patch/8 centred on the patch, max 1, no zeros."""
    from scipy.ndimage import gaussian_filter
    g = np.zeros(patch_size, np.float64)
    g[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(g, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g /= g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


def window_starts(size: int, patch: int, step_size: float) -> List[int]:
    """nnU-Net's tile positions along one axis: evenly spread, at most step_size * patch apart."""
    steps = int(np.ceil((size - patch) / (patch * step_size))) + 1
    if steps == 1:
        return [0]
    return [int(np.round((size - patch) / (steps - 1) * i)) for i in range(steps)]


def sliding_window_predict(run_patch: PatchFunction, image: np.ndarray, patch_size: Sequence[int],
                           step_size: float = 0.5, batch_size: int = 4) -> np.ndarray:
    """Logits (K, H, W) of one normalised slice (C, H, W), tiled with `patch_size` like nnU-Net's predictor."""
    c, h, w = image.shape
    ph, pw = patch_size
    pad = [(0, 0)] + [((p - s) // 2, p - s - (p - s) // 2) if s < p else (0, 0) for s, p in ((h, ph), (w, pw))]
    padded = np.pad(image, pad, mode="constant")
    gauss = gaussian_importance(patch_size)
    tiles = [(y, x) for y in window_starts(padded.shape[1], ph, step_size)
             for x in window_starts(padded.shape[2], pw, step_size)]
    logits, weight = None, np.zeros(padded.shape[1:], np.float32)
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i:i + batch_size]
        out = run_patch(np.stack([padded[:, y:y + ph, x:x + pw] for y, x in chunk]).astype(np.float32))
        if logits is None:
            logits = np.zeros((out.shape[1], *padded.shape[1:]), np.float32)
        for (y, x), o in zip(chunk, out):
            logits[:, y:y + ph, x:x + pw] += o * gauss
            weight[y:y + ph, x:x + pw] += gauss
    logits /= weight
    (top, _), (left, _) = pad[1], pad[2]
    return logits[:, top:top + h, left:left + w]


def segment_volume(run_patch: PatchFunction, volume: np.ndarray, spacing_zyx: Sequence[float],
                   preprocessing: Preprocessing, patch_size: Sequence[int], step_size: float = 0.5) -> np.ndarray:
    """Labels (Z, Y, X) of a raw (C, Z, Y, X) image: preprocess, slide over every slice, argmax, restore the grid."""
    x = preprocessing.apply(volume, spacing_zyx)
    labels = np.stack([sliding_window_predict(run_patch, x[:, s], patch_size, step_size).argmax(0)
                       for s in range(x.shape[1])])
    return preprocessing.restore(labels, volume.shape[1:])


def torch_runner(network: torch.nn.Module) -> PatchFunction:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(batch)).float().numpy()
    return run
