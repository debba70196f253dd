"""ImageNet weights for the SAP stream (MaxViT), from a local file, a folder of files, or (when asked) timm's hub.

Files are read with safetensors or `torch.load(weights_only=True)`; nothing is unpickled. The relative-position
bias tables are resized to the network's window size by timm's own `checkpoint_filter_fn`.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

ENV_VAR = "DANIE_PRETRAINED"
HUB = "hub"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
REL_POS_TABLE = "relative_position_bias_table"
STEM_CONV = "stem.conv1.weight"
EXPECTED_FILES = {"maxvit_tiny_tf_224": "DANIE-S", "maxvit_small_tf_224": "DANIE-L"}


class PretrainedWeightsError(RuntimeError):
    """A weights file is missing, unreadable, or does not fit the network's MaxViT."""


@dataclass
class LoadReport:
    source: str
    model_name: str
    loaded: int = 0
    resized: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"ImageNet weights for {self.model_name} from {self.source}: loaded {self.loaded} tensors "
                f"({len(self.resized)} relative-position tables resized to the window size, "
                f"{len(self.adapted)} input convs adapted to the channel count, "
                f"{len(self.ignored)} classifier tensors ignored)")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict (weights_only=True); unwrap {'state_dict': ...} and kin."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"weights file {path!r} does not exist (set {ENV_VAR} to an existing "
                                     f"file or folder, or unset it to train from scratch)")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if path.endswith(".safetensors") or (len(head) == 8 and not head.startswith((b"PK", b"\x80"))):
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a weights file at all
        raise PretrainedWeightsError(f"could not read {path!r} as safetensors or a torch state dict "
                                     f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the file is "
                                     f"truncated or not a weights file: download it again") from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path!r} holds no tensor state dict (found {type(state).__name__})")
    return state


def find_weights_file(model_name: str, folder: str) -> str:
    """In `folder`, a file named after the timm model (e.g. maxvit_small_tf_224.in1k.safetensors) or a
    Hugging Face cache entry models--timm--<model>.*/snapshots/*/model.safetensors."""
    patterns = [os.path.join(folder, f"{model_name}*{suffix}") for suffix in WEIGHT_SUFFIXES]
    patterns += [os.path.join(folder, "**", f"models--timm--{model_name}*", "snapshots", "*", f"*{suffix}")
                 for suffix in WEIGHT_SUFFIXES]
    for pattern in patterns:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return hits[0]
    raise PretrainedWeightsError(f"no weights file for {model_name} in folder {folder!r}: expected e.g. "
                                 f"{model_name}.in1k.safetensors (get it with `danie-nnunet download-weights`)")


def _hub_state_dict(model_name: str) -> Dict[str, torch.Tensor]:
    import timm
    try:
        return timm.create_model(model_name, pretrained=True).state_dict()
    except Exception as e:
        raise PretrainedWeightsError(f"downloading {model_name} weights from the hub failed ({e}); without "
                                     f"internet, copy a weights file here and point {ENV_VAR} at it") from None


def _to_features_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm's features_only wrapper names the stage modules 'stages_0' where the classifier model has 'stages.0'."""
    out = {}
    for k, v in state.items():
        if k.startswith("stages.") and k.split(".")[1].isdigit():
            _, idx, rest = k.split(".", 2)
            k = f"stages_{idx}.{rest}"
        out[k] = v
    return out


def load_sap_weights(sap: nn.Module, model_name: str, source: str) -> LoadReport:
    """Load ImageNet MaxViT weights (a file, a folder, or 'hub') into the SAP stream of a DANIE network."""
    from timm.models import adapt_input_conv
    from timm.models.maxxvit import checkpoint_filter_fn

    if source == HUB:
        path, state = f"the timm hub ({model_name})", _hub_state_dict(model_name)
    else:
        path = find_weights_file(model_name, source) if os.path.isdir(source) else source
        state = read_state_dict(path)
    report = LoadReport(source=path, model_name=model_name)
    state = _to_features_keys(state)
    target = sap.state_dict()
    report.ignored = sorted(k for k in state if k not in target)
    missing = sorted(k for k in target if k not in state)
    hint = (f"{model_name} is the SAP backbone of {EXPECTED_FILES.get(model_name, 'this network')}; "
            f"check that the file holds {model_name} weights")
    if missing:
        raise PretrainedWeightsError(f"{path!r} lacks {len(missing)} of {len(target)} tensors of {model_name} "
                                     f"(e.g. {missing[:3]}): {hint}")
    state = {k: v for k, v in state.items() if k in target}
    bad = []
    for k, v in state.items():
        want = target[k].shape
        if v.shape == want or k.endswith(REL_POS_TABLE):
            continue
        if k == STEM_CONV and v.shape[0] == want[0] and v.shape[2:] == want[2:]:
            report.adapted.append(k)  # input_adapter='timm' with Cin != 3: timm sums/repeats the RGB kernels
        else:
            bad.append((k, tuple(v.shape), tuple(want)))
    if bad:
        raise PretrainedWeightsError(f"{path!r} does not fit {model_name}: {len(bad)} tensors have other shapes "
                                     f"(e.g. {bad[:2]} as (name, file, model)): {hint}")
    for k in report.adapted:
        state[k] = adapt_input_conv(target[k].shape[1], state[k])
    report.resized = sorted(k for k, v in state.items()
                            if k.endswith(REL_POS_TABLE) and v.shape != target[k].shape)
    try:
        sap.load_state_dict(checkpoint_filter_fn(state, sap), strict=True)
    except Exception as e:
        raise PretrainedWeightsError(f"{path!r} does not fit {model_name} ({e}): {hint}") from None
    report.loaded = len(state)
    return report


def load_imagenet_weights(network: nn.Module, source: Optional[str] = None) -> Optional[LoadReport]:
    """Load weights into `network.sap` from `source` (or $DANIE_PRETRAINED); None when no source is given.

    A given source that cannot be used raises PretrainedWeightsError: a run the user asked to start from
    ImageNet never silently starts from scratch.
    """
    source = source if source is not None else os.environ.get(ENV_VAR, "")
    if not source:
        return None
    if getattr(network, "sap", None) is None:
        raise PretrainedWeightsError("this DANIE configuration has no SAP stream (use_sap=False): there is "
                                     f"nothing to load ImageNet weights into; unset {ENV_VAR}")
    return load_sap_weights(network.sap, network.cfg.sap_model, source)
