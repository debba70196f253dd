"""Export of a trained DANIE fold (`trained_model.py` loads it) to ONNX and/or TorchScript.

`export_fold` writes ONNX and/or TorchScript for the fixed patch
size plus a JSON sidecar (patch size, spacing, axis order, normalisation, labels), after checking that the
exported model gives PyTorch's logits on random input; `trained_model.segment_volume` runs the exported model by
sliding window (`onnx_runner` / `torchscript_runner`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from .network import DANIE
from .trained_model import (SIDECAR_VERSION, PatchFunction, TrainedFold, TrainedModelError, load_trained_fold,
                            torch_runner)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
PARITY_TOLERANCE = 1e-4  # max |exported - PyTorch| relative to max(1, max |PyTorch logits|): fp32 round-off


def onnx_runner(path: str) -> PatchFunction:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def torchscript_runner(path: str) -> PatchFunction:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit deprecated
        return torch_runner(torch.jit.load(path, map_location="cpu").eval())


RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner}


# ---------------------------------------------------------------------------------------------------- export
def _export_onnx(network: DANIE, example: torch.Tensor, path: str) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise TrainedModelError(f"ONNX export needs the packages onnx and onnxscript ({e}); "
                                f"pip install onnx onnxscript onnxruntime") from None
    batch = torch.export.Dim("batch", min=1, max=1024)
    # torch's dynamo-based exporter (torch.export, then onnxscript); the batch axis stays dynamic. Its progress
    # lines go to stdout and are dropped; errors are raised as usual
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(network, (example,), path, dynamo=True, input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), external_data=False, verbose=False)


def _export_torchscript(network: DANIE, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        # torch marks torch.jit deprecated (it still loads in C++ libtorch and Triton); the trace is checked below
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network, example, check_trace=False)
        torch.jit.save(traced, path)


def check_parity(run: PatchFunction, network: DANIE, batch: int = 2, seed: int = 0) -> float:
    """Max |exported - PyTorch| of the logits on random input of the patch size, relative to max(1, max |logits|)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, network.in_chans, *network.img_size, generator=g)
    ref = torch_runner(network)(x.numpy())
    out = run(x.numpy())
    if out.shape != ref.shape:
        raise TrainedModelError(f"the exported model returned shape {out.shape}, PyTorch {ref.shape}")
    return float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))


def default_name(fold: TrainedFold) -> str:
    return f"{fold.trainer_name}_fold{fold.fold}"


def export_fold(fold: TrainedFold, out_dir: str, formats: Sequence[str] = ("onnx",), name: Optional[str] = None,
                tolerance: float = PARITY_TOLERANCE) -> dict:
    """Write <name>.onnx / <name>.torchscript.pt and <name>.json under out_dir; returns the sidecar.

    Every format is checked against PyTorch on random input (batch 2, the patch size) before anything is
    written to out_dir; a model that does not match raises TrainedModelError and leaves nothing behind.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise TrainedModelError(f"unknown export format(s) {unknown or formats}; choose from {FORMATS}")
    name = name or default_name(fold)
    network = fold.network.cpu().eval()
    network.deep_supervision = False
    example = torch.zeros(1, network.in_chans, *network.img_size)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    sidecar = fold.sidecar()
    sidecar["files"], sidecar["parity"] = {}, {}
    tmp = tempfile.mkdtemp(prefix=".danie-export-", dir=out_dir)
    try:
        for fmt in formats:
            filename = name + SUFFIXES[fmt]
            path = os.path.join(tmp, filename)
            (_export_onnx if fmt == "onnx" else _export_torchscript)(network, example, path)
            diff = check_parity(RUNNERS[fmt](path), network)
            if not diff <= tolerance:
                raise TrainedModelError(f"the {fmt} model differs from PyTorch by {diff:.2e} (relative to the "
                                        f"logits' scale), more than the fp32 tolerance {tolerance:.0e}")
            sidecar["files"][fmt] = filename
            if fmt == "onnx":
                import onnx
                model = onnx.load(path, load_external_data=False)
                sidecar["onnx_opset"] = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            sidecar["parity"][fmt] = {"max_relative_difference": diff, "tolerance": tolerance}
        sidecar["versions"] = _versions()
        with open(os.path.join(tmp, name + ".json"), "w") as f:
            json.dump(sidecar, f, indent=2)
        for filename in list(sidecar["files"].values()) + [name + ".json"]:
            os.replace(os.path.join(tmp, filename), os.path.join(out_dir, filename))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sidecar


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("torch", "timm", "onnx", "onnxscript", "onnxruntime", "danie-nnunet"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def load_sidecar(path: str) -> dict:
    with open(path) as f:
        sidecar = json.load(f)
    if sidecar.get("sidecar_version") != SIDECAR_VERSION:
        raise TrainedModelError(f"{path} is not a DANIE export sidecar (version {SIDECAR_VERSION})")
    return sidecar


# ------------------------------------------------------------------------------------------------------- CLI
def cmd_export(args) -> int:
    fold = load_trained_fold(args.model_folder, args.fold, args.checkpoint, args.configuration)
    sidecar = export_fold(fold, args.out, args.format, args.name)
    out = os.path.abspath(args.out)
    for fmt, filename in sidecar["files"].items():
        print(f"wrote {os.path.join(out, filename)} (parity with PyTorch on random input: max relative "
              f"difference {sidecar['parity'][fmt]['max_relative_difference']:.1e})")
    print(f"wrote {os.path.join(out, (args.name or default_name(fold)) + '.json')} (patch size, spacing, "
          f"normalisation, labels); sliding-window inference with the exported model: docs/export.md")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained DANIE fold to ONNX / TorchScript with a parity check against PyTorch",
        description="Export one fold of an nnU-Net results folder trained with a DANIE trainer, for its fixed patch "
                    "size, with a JSON sidecar. The checkpoint is an nnU-Net pickle read with "
                    "torch.load(weights_only=False): only export checkpoints you trust.")
    p.add_argument("model_folder", help="nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>")
    p.add_argument("--fold", default="0", help="fold to export (0-4 or all; default 0)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--format", nargs="+", default=["onnx"], choices=FORMATS)
    p.add_argument("--name", default=None, help="file name stem (default <trainer>_fold<fold>)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)
