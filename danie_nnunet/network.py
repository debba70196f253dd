"""DANIE: configuration in, logits out (paper Fig. 3). Independent of nnU-Net: torch and timm only."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .config import DANIEConfig, get_config
from .encoder import HierarchicalAttentionalPerception, create_sap_stream
from .joint_preservation import JointPreservation, PredictionHeads
from .layers import InputAdapter
from .patch_size import STRIDE, check_patch_size, partition_sizes


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
        adapt = cfg.input_adapter == "conv" and in_chans != 3
        self.input_adapter = InputAdapter(in_chans) if adapt else nn.Identity()
        stream_chans = 3 if adapt else in_chans
        self.sap = create_sap_stream(cfg, self.img_size, stream_chans) if cfg.use_sap else None
        self.hap = HierarchicalAttentionalPerception(cfg, stream_chans) if cfg.use_hap else None
        self.joint_preservation = JointPreservation(cfg)
        self.heads = PredictionHeads(cfg.dims, num_classes, cfg.head_weights)
        p = partition_sizes(self.img_size) if cfg.use_sap else (1, 1)
        self.input_multiple = (STRIDE * p[0], STRIDE * p[1])

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

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"DANIE expects a (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[2] % self.input_multiple[0] or x.shape[3] % self.input_multiple[1]:
            raise ValueError(f"DANIE was built for {self.img_size}; input {tuple(x.shape[2:])} must be a multiple "
                             f"of {self.input_multiple} per axis (rebuild the network with img_size=H, W)")

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        self._check_input(x)
        x = self.input_adapter(x)
        s = self.sap(x) if self.sap is not None else [None] * 4
        h = self.hap(x) if self.hap is not None else [None] * 4
        outputs = self.heads(self.joint_preservation(s, h), x.shape[-2:])
        return outputs if self.deep_supervision else outputs[0]


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
