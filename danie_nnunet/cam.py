"""Grad-CAM maps of a trained DANIE at its attention outputs, in one figure like the paper's Figure 1.

Grad-CAM (Selvaraju et al., the paper's [24]) for segmentation: the target is the class logit summed over the
pixels predicted as that class; a layer's map is ReLU(sum_c w_c A_c) with w_c the spatial mean of the target's
gradient with respect to channel c of the layer's output A. Maps are taken at one level k (stride 2^(k+1)) at:

- L-spa: local spatial attention, O = A^s ⊙ m (Eq. 3), in the last HAP unit of stage k;
- L-cha: local channel attention, m = A^c ⊙ h (Eq. 2), same unit (the max and avg branches are summed);
- G-spa: global spatial attention, the SAP (MaxViT window/grid attention) stage-k output s_k;
- G-cha: global channel attention, ES(s_k) (Eq. 6-7);
- JP: after Joint Preservation, j_k (Eq. 11).

A tap the configuration lacks (e.g. no HAP in ablation row A.1) is left out of the figure and reported.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .trained_model import TrainedModelError, load_trained_fold, read_image
from .visualize import window

TAPS = {  # name -> description, in the order of the figure
    "L-spa": "local spatial att. (HAP)",
    "L-cha": "local channel att. (HAP)",
    "G-spa": "global spatial att. (SAP)",
    "G-cha": "global channel att. (ES)",
    "JP": "Joint Preservation",
}
PANEL_PX, TITLE_PX, FOOTER_PX, DPI = 256, 44, 24, 100


@dataclass
class CamResult:
    maps: Dict[str, np.ndarray]  # tap -> (H, W) map in [0, 1] on the input grid
    prediction: np.ndarray  # (H, W) argmax labels
    target_pixels: int  # pixels predicted as the class; 0 means the whole image was the Grad-CAM target
    absent: List[str] = field(default_factory=list)  # taps this configuration does not have


def _tap_modules(network: nn.Module, level: int) -> Tuple[Dict[str, List[Tuple[nn.Module, int]]], List[str]]:
    """tap -> [(module, index into its output list or -1)]; and the taps the configuration lacks."""
    k = level - 1
    taps: Dict[str, List[Tuple[nn.Module, int]]] = {}
    if network.hap is not None:
        attention = network.hap.stages[k][-1].attention
        if attention.spatial_max is not None:
            taps["L-spa"] = [(attention.spatial_out, -1)]
        if attention.channel_att is not None:
            taps["L-cha"] = [(attention.channel_out, -1)]
    if network.sap is not None:
        taps["G-spa"] = [(network.sap, k)]
    aggregation = network.joint_preservation.aggregations[k]
    if aggregation.es is not None and network.sap is not None:
        taps["G-cha"] = [(aggregation.es, -1)]
    taps["JP"] = [(network.joint_preservation.blocks[k], -1)]
    return {name: taps[name] for name in TAPS if name in taps}, [name for name in TAPS if name not in taps]


def grad_cam(network: nn.Module, x: torch.Tensor, class_index: int, level: int = 3) -> CamResult:
    """Grad-CAM maps at every tap of `level` (1-4) for one input (1, C, H, W); the network stays unchanged."""
    if not 1 <= level <= 4:
        raise TrainedModelError(f"level must be 1-4 (strides 4, 8, 16, 32), got {level}")
    if not 0 <= class_index < network.num_classes:
        raise TrainedModelError(f"class {class_index} out of range 0-{network.num_classes - 1}")
    taps, absent = _tap_modules(network, level)
    captured: Dict[str, List[torch.Tensor]] = {name: [] for name in taps}
    handles = []
    for name, entries in taps.items():
        for module, index in entries:
            def hook(_module, _inputs, output, name=name, index=index):
                captured[name].append(output[index] if index >= 0 else output)
            handles.append(module.register_forward_hook(hook))
    was_training, deep_supervision = network.training, network.deep_supervision
    network.eval()
    network.deep_supervision = False
    try:
        with torch.enable_grad():
            logits = network(x)
            prediction = logits[0].argmax(0)
            region = prediction == class_index
            target_pixels = int(region.sum())
            weight = region.float() if target_pixels else torch.ones_like(region, dtype=torch.float)
            score = (logits[0, class_index] * weight).sum()
            tensors = [t for name in taps for t in captured[name]]
            grads = torch.autograd.grad(score, tensors, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
        network.deep_supervision = deep_supervision
    maps, i = {}, 0
    for name in taps:
        summed = None
        for activation in captured[name]:
            grad = grads[i] if grads[i] is not None else torch.zeros_like(activation)
            i += 1
            term = (grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True)  # sum_c w_c A_c
            summed = term if summed is None else summed + term
        if summed is None:  # the module did not run in this forward pass
            absent.append(name)
            continue
        cam = F.interpolate(F.relu(summed.detach().float()), size=x.shape[-2:], mode="bilinear",
                            align_corners=False)[0, 0]
        peak = float(cam.max())
        maps[name] = (cam / peak if peak > 0 else cam).cpu().numpy()
    return CamResult(maps, prediction.cpu().numpy(), target_pixels, absent)


def _pad_to_multiple(x: np.ndarray, multiple: Sequence[int]) -> Tuple[np.ndarray, Tuple[slice, slice]]:
    """Zero-pad (C, H, W) symmetrically to multiples of `multiple` (nnU-Net pads normalised data with 0)."""
    pads, crop = [(0, 0)], []
    for size, m in zip(x.shape[1:], multiple):
        total = -(-size // m) * m - size
        pads.append((total // 2, total - total // 2))
        crop.append(slice(total // 2, total // 2 + size))
    return np.pad(x, pads), tuple(crop)


def _resize(a: np.ndarray, size: Sequence[int], mode: str = "bilinear") -> np.ndarray:
    if tuple(a.shape) == tuple(size):
        return a
    t = torch.from_numpy(a.astype(np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=tuple(size), mode=mode, **kwargs)[0, 0].numpy()


def figure_size(num_panels: int) -> Tuple[int, int]:
    """(width, height) in pixels of a figure with the image panel and `num_panels` maps."""
    return (num_panels + 1) * PANEL_PX, TITLE_PX + PANEL_PX + FOOTER_PX


def save_figure(grey: np.ndarray, prediction: np.ndarray, maps: Dict[str, np.ndarray], class_name: str,
                footer: str, out_file: str, spacing: Sequence[float] = (1.0, 1.0)) -> Tuple[int, int]:
    """Image (with the class's predicted outline) and one jet overlay per map, side by side; returns the size."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    width, height = figure_size(len(maps))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    aspect = spacing[0] / spacing[1]
    panels = [("image", f"{class_name} (predicted, outlined)", None)] + [
        (name if cam.max() > 0 else f"{name}: no positive evidence", TAPS[name], cam) for name, cam in maps.items()]
    for i, (title, subtitle, cam) in enumerate(panels):
        ax = fig.add_axes((i * PANEL_PX / width, FOOTER_PX / height, PANEL_PX / width, PANEL_PX / height))
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255, aspect=aspect, interpolation="nearest")
        if cam is None:
            if prediction.any():
                ax.contour(prediction.astype(float), levels=[0.5], colors=["#e69f00"], linewidths=1.2)
        else:
            ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1, aspect=aspect, interpolation="bilinear")
        ax.set_axis_off()
        fig.text((i + 0.5) * PANEL_PX / width, 1 - 4 / height, f"{title}\n{subtitle}", ha="center", va="top",
                 fontsize=9)
    fig.text(0.5, 4 / height, footer, ha="center", va="bottom", fontsize=8)
    save_figure_atomically(fig, out_file)
    plt.close(fig)
    return width, height


def save_figure_atomically(fig, out_file: str) -> None:
    """Save a matplotlib figure as PNG through a temporary file in the same folder: never a half-written PNG."""
    folder = os.path.dirname(os.path.abspath(out_file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, out_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cam_figure(model_folder: str, image_files: Sequence[str], class_name: str, out_file: str,
               slice_index: Optional[int] = None, label_file: Optional[str] = None, level: int = 3,
               fold: str = "0", checkpoint: str = "checkpoint_final.pth", configuration: str = "2d",
               device: str = "cpu", ct_window: Optional[Sequence[float]] = None) -> dict:
    """Grad-CAM figure of one slice of a raw case; returns what was drawn (slice, size, taps, target pixels).

    Preprocessing is nnU-Net's for the configuration (`danie_nnunet.export.Preprocessing`); the slice is padded
    to a size the network takes, and the maps are cropped back and resized to the raw slice.
    """
    trained = load_trained_fold(model_folder, fold, checkpoint, configuration, device)
    class_index = trained.class_index(class_name)
    if class_index == 0:
        raise TrainedModelError("class 0 is the background; choose a foreground class: " + trained.class_names())
    volume, spacing = read_image(image_files)
    pre = trained.preprocessing
    raw = volume.transpose(0, *[a + 1 for a in pre.transpose_forward])
    raw_spacing = [spacing[a] for a in pre.transpose_forward][1:]
    if slice_index is None:
        slice_index = _default_slice(label_file, class_index, pre.transpose_forward, raw.shape[1])
    if not 0 <= slice_index < raw.shape[1]:
        raise TrainedModelError(f"slice {slice_index} out of range: the image has {raw.shape[1]} slices "
                                f"along the network's slicing axis")
    x = pre.apply(volume, spacing)[:, slice_index]
    padded, crop = _pad_to_multiple(x, trained.network.input_multiple)
    result = grad_cam(trained.network, torch.from_numpy(padded)[None].to(device), class_index, level)
    size = raw.shape[2:]
    maps = {name: np.clip(_resize(m[crop], size), 0, 1) for name, m in result.maps.items()}
    prediction = _resize((result.prediction[crop] == class_index).astype(np.float32), size, "nearest") > 0.5
    scheme = pre.normalization[0]
    low_high = ct_window or (scheme["clip"] if scheme["scheme"] == "CTNormalization" else (None, None))
    grey = window(raw[0, slice_index], *low_high)
    name = next((k for k, v in trained.labels.items() if v == class_index), str(class_index))
    target = (f"{result.target_pixels} predicted pixels" if result.target_pixels
              else "no pixel predicted: whole image")
    footer = (f"Grad-CAM for '{name}' ({target}), slice {slice_index}, level {level} (stride {2 ** (level + 1)}), "
              f"{trained.trainer_name} fold {trained.fold}")
    width, height = save_figure(grey, prediction, maps, name, footer, out_file, raw_spacing)
    return {"out": out_file, "slice": slice_index, "size": (width, height), "taps": list(maps),
            "absent": result.absent, "empty": [t for t, m in maps.items() if not m.max() > 0],
            "target_pixels": result.target_pixels, "class": name}


def _default_slice(label_file: Optional[str], class_index: int, transpose: Sequence[int], num_slices: int) -> int:
    """The slice with the most pixels of the class in the ground truth, or the middle slice without one."""
    if label_file is None:
        return num_slices // 2
    labels, _ = read_image([label_file])
    labels = labels[0].transpose(transpose)
    counts = (labels == class_index).reshape(labels.shape[0], -1).sum(1)
    if not counts.any():
        raise TrainedModelError(f"class {class_index} does not occur in {label_file}; give --slice")
    return int(np.argmax(counts))


# ------------------------------------------------------------------------------------------------------- CLI
def cmd_cam(args) -> int:
    info = cam_figure(args.model_folder, args.image, args.class_name, args.out, args.slice, args.label, args.level,
                      args.fold, args.checkpoint, args.configuration, args.device, args.window)
    print(f"wrote {info['out']} ({info['size'][0]}x{info['size'][1]}): Grad-CAM of '{info['class']}' at "
          f"{', '.join(info['taps'])} on slice {info['slice']}")
    if info["absent"]:
        print(f"not in this configuration (left out): {', '.join(info['absent'])}")
    if info["empty"]:
        print(f"no positive evidence (the Grad-CAM map is zero after its ReLU): {', '.join(info['empty'])}")
    if not info["target_pixels"]:
        print(f"note: the model predicts no pixel of '{info['class']}' on this slice; the maps explain the class "
              f"logit summed over the whole slice")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cam", help="Grad-CAM maps at DANIE's attention outputs for a case and a class (the paper's Figure 1)",
        description="Grad-CAM of a trained DANIE fold at local spatial / channel attention (HAP), global spatial "
                    "attention (SAP), global channel attention (ES) and after Joint Preservation, drawn on one "
                    "slice of a raw case. Runs on the CPU. The checkpoint is an nnU-Net pickle read with "
                    "torch.load(weights_only=False): only use checkpoints you trust.")
    p.add_argument("model_folder", help="nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>")
    p.add_argument("--image", nargs="+", required=True, help="the raw case, one file per channel (_0000, ...)")
    p.add_argument("--class", dest="class_name", required=True, help="class name from dataset.json or its label")
    p.add_argument("--slice", type=int, default=None,
                   help="slice index (default: most pixels of the class in --label, else the middle slice)")
    p.add_argument("--label", default=None, help="ground-truth file, to pick the slice")
    p.add_argument("--level", type=int, default=3, choices=[1, 2, 3, 4],
                   help="feature level (stride 4, 8, 16, 32; default 3)")
    p.add_argument("--fold", default="0")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="grey-value window (default: the plans' CT clip range, else the 1-99th percentiles)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=cmd_cam)
