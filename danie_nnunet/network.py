"""DANIE: configuration in, logits out (paper Fig. 3). Independent of nnU-Net: torch and timm only."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .config import DANIEConfig, get_config
from .cuda_graphs import CUDAGraphInference
from .mirror_batching import MirrorBatching
from .encoder import HierarchicalAttentionalPerception, create_sap_stream
from .joint_preservation import JointPreservation, PredictionHeads, with_current_head_names
from .layers import InputAdapter
from .patch_size import STRIDE, check_patch_size, partition_sizes
from .recompute import DEFAULT_SEGMENTS, set_recompute

_WIDTH_NAMES = {512: " (DANIE-S)", 768: " (DANIE-L)"}  # C_4 of the presets
# (what, state dict keys (first present wins), axis, value -> text): facts a DANIE checkpoint records in its shapes
_CHECKPOINT_FACTS = (
    ("classes", ("heads.seg_layers.0.weight",), 0, str),
    # the 1x1 input adapter if there is one (in_chans != 3), else the first conv of a stream
    ("input channels", ("input_adapter.0.weight", "sap.stem.conv1.weight", "hap.embed.0.0.weight"), 1, str),
    ("stage-4 width", ("heads.seg_layers.3.weight",), 1, lambda c: f"{c}{_WIDTH_NAMES.get(c, '')}"),
    # relative-position table of (2p-1)^2 entries: p is the MaxViT partition size, set by the patch size
    ("MaxViT partition size (set by the patch size)",
     ("sap.stages_0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table",), 1, lambda n: str((n + 1) // 2)),
)


class CheckpointMismatchError(RuntimeError):
    """A state dict of another DANIE (variant, ablation row, class count, input channels or patch size)."""


class DANIE(nn.Module):
    """Dual Attention Encoder with Joint Preservation.

    Built for one 2D patch size (MaxViT's windows are fixed at construction, spec §2.9); it also takes inputs
    whose axes are multiples of the built size's 32*p. `forward` returns the summed prediction y, or
    [y, p_1, p_2, p_3, p_4] (all at input resolution) while `deep_supervision` is on.
    """

    def __init__(self, cfg: DANIEConfig, img_size: Sequence[int], in_chans: int = 1, num_classes: int = 2,
                 deep_supervision: bool = False):
        super().__init__()
        self.img_size = check_patch_size(img_size)
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"DANIE needs in_chans >= 1 and num_classes >= 1, got {in_chans} and {num_classes}")
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        self.deep_supervision = deep_supervision
        self.channels_last = False
        self.cuda_graphs: Optional[CUDAGraphInference] = None
        self.mirror_batching: Optional[MirrorBatching] = None
        adapt = cfg.input_adapter == "conv" and in_chans != 3
        self.input_adapter = InputAdapter(in_chans) if adapt else nn.Identity()
        stream_chans = 3 if adapt else in_chans
        self.sap = create_sap_stream(cfg, self.img_size, stream_chans) if cfg.use_sap else None
        self.hap = HierarchicalAttentionalPerception(cfg, stream_chans) if cfg.use_hap else None
        self.joint_preservation = JointPreservation(cfg)
        self.heads = PredictionHeads(cfg.dims, num_classes, cfg.head_weights, self.img_size, cfg.head_upsample)
        p = partition_sizes(self.img_size) if cfg.use_sap else (1, 1)
        self.input_multiple = (STRIDE * p[0], STRIDE * p[1])

    def set_channels_last(self, enable: bool = True) -> "DANIE":
        """Run in channels-last (NHWC) memory format: cuDNN's convolutions and MaxViT's attention blocks (which
        work on NHWC views) then skip layout transposes. Same function; weights are converted in place and inputs
        at the start of `forward`."""
        self.channels_last = bool(enable)
        return self.to(memory_format=torch.channels_last if enable else torch.contiguous_format)

    def set_fast_norm(self, enable: bool = True) -> "DANIE":
        """Run MaxViT's LayerNorms in the autocast dtype (timm's fast_norm; fp32 statistics inside the kernel).
        CUDA autocast runs layer_norm in fp32: a bf16 input is cast up, normalised, window-partitioned and cast
        back down by the next Linear, which rounds the output to bf16 anyway; this skips the fp32 round trip and
        its saved fp32 copy. The same function to bf16 rounding (the LayerNorm weights are rounded to bf16 as
        autocast rounds the Linear weights); a bench variant (cl+fn), not a trainer default until it is timed."""
        for m in self.sap.modules() if self.sap is not None else ():
            if hasattr(m, "_fast_norm"):  # timm's LayerNorm / LayerNorm2d
                m._fast_norm = bool(enable)
        return self

    def set_cuda_graphs(self, enable: bool = True, max_batch: int = 1, max_graphs: int = 4) -> "DANIE":
        """Replay eval-mode, no-grad forwards of CUDA inputs of at most `max_batch` slices from captured CUDA
        graphs (`cuda_graphs.py`): the same function with one launch instead of about 800, for nnU-Net's
        predictor, which runs one tile at a time. Training and autograd forwards are unchanged."""
        self.cuda_graphs = CUDAGraphInference(max_batch, max_graphs) if enable else None
        return self

    def set_mirror_batching(self, enable: bool = True) -> "DANIE":
        """Run a tile and its three flips as one batch when an eval-mode, no-grad call gets a single tile, and
        answer the calls on the flips that nnU-Net's test-time mirroring makes next from that batch
        (`mirror_batching.py`): each output is the network's for exactly its input. Training is unchanged."""
        self.mirror_batching = MirrorBatching() if enable else None
        return self

    def set_grad_checkpointing(self, enable: bool = True, segments: Sequence[str] = DEFAULT_SEGMENTS) -> List[str]:
        """Recompute the activation-heavy segments in the backward pass (`recompute.py`); timm's method name."""
        return set_recompute(self, segments if enable else ())

    @classmethod
    def from_plans(cls, input_channels: int, num_classes: int, deep_supervision: bool = False,
                   config: Optional[dict] = None, img_size: Sequence[int] = (), strides=None) -> "DANIE":
        """Build from an nnU-Net plans 'architecture' block (network_class_name 'danie_nnunet.network.DANIE.from_plans').

        nnU-Net's get_network_from_plans calls this with input_channels, num_classes, deep_supervision and the
        block's arch_kwargs; `strides` only describes the encoder's downsampling to nnU-Net and is ignored.
        """
        if config is None or not img_size:
            raise ValueError("a DANIE plans architecture block needs arch_kwargs 'config' and 'img_size'; "
                             "write it with danie_nnunet.network.plans_architecture()")
        return cls(DANIEConfig.from_dict(config), img_size, input_channels, num_classes, bool(deep_supervision))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's load_state_dict; with strict=True a checkpoint of another DANIE is refused with a message
        saying what differs (instead of torch's list of hundreds of size mismatches). Checkpoints of before
        2026-12-08 name the heads `heads.heads.K`, now `heads.seg_layers.K`: both load."""
        state_dict = with_current_head_names(state_dict)
        if strict:
            mismatch = self._describe_mismatch(state_dict)
            if mismatch:
                raise CheckpointMismatchError(mismatch)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _describe_mismatch(self, state_dict) -> str:
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
        if not (missing or unexpected or wrong):
            return ""
        differences = []
        for what, keys, axis, text in _CHECKPOINT_FACTS:
            key_own = next((k for k in keys if k in own), None)
            key_theirs = next((k for k in keys if k in state_dict and state_dict[k].ndim > axis), None)
            if key_own and key_theirs:
                theirs, ours = int(state_dict[key_theirs].shape[axis]), int(own[key_own].shape[axis])
                if theirs != ours:
                    differences.append(f"{what}: checkpoint {text(theirs)}, this network {text(ours)}")
        streams = {s for s in ("sap", "hap") if any(k.startswith(s + ".") for k in state_dict)}
        own_streams = {s for s in ("sap", "hap") if getattr(self.cfg, "use_" + s)}
        if streams != own_streams:
            differences.append(f"streams: checkpoint {sorted(streams) or 'none'}, this network {sorted(own_streams)}")
        if (missing or unexpected) and not differences:
            differences.append(f"{len(missing)} tensors missing, {len(unexpected)} unexpected (e.g. "
                               f"{(missing + unexpected)[0]}): another ablation configuration or not a DANIE "
                               f"checkpoint")
        elif not differences:
            differences.append(f"{len(wrong)} tensors of another shape, e.g. {wrong[0]}: "
                               f"{tuple(state_dict[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
        return (f"the checkpoint does not fit this network (DANIE-{self.cfg.name}, patch {list(self.img_size)}, "
                f"{self.in_chans} input channel(s), {self.num_classes} classes): " + "; ".join(differences)
                + ". Use the checkpoint with the plans.json/dataset.json of the model folder it was trained in "
                  "(nnUNet_results/DatasetXXX/TRAINER__PLANS__2d), or train this configuration.")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"DANIE expects a (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[2] % self.input_multiple[0] or x.shape[3] % self.input_multiple[1]:
            raise ValueError(f"DANIE was built for {self.img_size}; input {tuple(x.shape[2:])} must be a multiple "
                             f"of {self.input_multiple} per axis (rebuild the network with img_size=H, W)")

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        self._check_input(x)
        if self.mirror_batching is not None and self.mirror_batching.applies(self, x):
            return self.mirror_batching(self._mirror_batch_forward, x)
        return self._graphed_forward(x)

    def _mirror_batch_forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self._graphed_forward(x, max_batch=x.shape[0])  # a tile and its flips: a graph of its own

    def _graphed_forward(self, x: torch.Tensor,
                         max_batch: Optional[int] = None) -> Union[torch.Tensor, List[torch.Tensor]]:
        if self.cuda_graphs is not None and self.cuda_graphs.applies(self, x, max_batch):
            return self.cuda_graphs(self, self._forward, x, extra=(self.deep_supervision, self.channels_last))
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        if self.channels_last:
            x = _channels_last(x)
        x = self.input_adapter(x)
        s = self.sap(x) if self.sap is not None else [None] * 4
        h = self.hap(x) if self.hap is not None else [None] * 4
        outputs = self.heads(self.joint_preservation(s, h), x.shape[-2:])
        return outputs if self.deep_supervision else outputs[0]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # a 1-channel NCHW tensor already counts as channels-last (a size-1 dim's stride is ignored), so .contiguous
    # keeps its strides, and a convolution of it returns NCHW: the input adapter's BatchNorm then ran cuDNN's NCHW
    # kernel, over 3 channels at full resolution (one 4.7 ms BN backward of 125 ms on an H200, docs/performance.md)
    if x.shape[1] == 1 and x.stride(1) != 1:
        return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    return x.contiguous(memory_format=torch.channels_last)


def create_danie(variant: Union[str, DANIEConfig] = "L", img_size: Sequence[int] = (224, 224), in_chans: int = 1,
                 num_classes: int = 2, deep_supervision: bool = False, **overrides) -> DANIE:
    """Build DANIE-S ('S'), DANIE-L ('L'), an ablation row ('A.1' ... 'C.5') or a DANIEConfig, with overrides."""
    return DANIE(get_config(variant, **overrides), img_size, in_chans, num_classes, deep_supervision)


def plans_architecture(cfg: DANIEConfig, img_size: Sequence[int]) -> dict:
    """The nnU-Net plans 'architecture' block that rebuilds this network with nnU-Net's get_network_from_plans."""
    return {"network_class_name": "danie_nnunet.network.DANIE.from_plans",
            "arch_kwargs": {"config": cfg.to_dict(), "img_size": [int(d) for d in img_size],
                            "strides": [[1, 1]] + [[2, 2]] * 5},  # stem stride 2, then four stages
            "_kw_requires_import": []}
