"""The two independent streams of the Dual Attention Encoder (paper §3.2-3.3, spec §2.2-2.3).

SAP (self-attentional perception) is a timm MaxViT whose four stage outputs are taken as they are; HAP
(hierarchical-attentional perception) is a CNN stream with HierarchicalAttention in each stage. Both give
features of C_k channels at strides 4, 8, 16 and 32.
"""
from __future__ import annotations

from typing import List, Sequence

import timm
import torch
from torch import nn

from .attention import HierarchicalAttention
from .config import DANIEConfig
from .layers import ConvBlock, ConvBnAct
from .patch_size import partition_sizes
from .qkv_split import split_qkv_first

SAP_OUT_INDICES = (1, 2, 3, 4)  # index 0 of timm's feature_info is the stride-2 stem (A3, A4)


def create_sap_stream(cfg: DANIEConfig, img_size: Sequence[int], in_chans: int = 3) -> nn.Module:
    """timm MaxViT at `img_size`, features_only, pretrained=False (weights are loaded by `pretrained.py`), its
    attention splitting q, k, v first (`qkv_split.py`)."""
    if not timm.is_model(cfg.sap_model):
        raise ValueError(f"timm has no model {cfg.sap_model!r}; DANIE uses MaxViT models such as "
                         f"'maxvit_tiny_tf_224' (S) or 'maxvit_small_tf_224' (L)")
    p = partition_sizes(img_size)
    sap = timm.create_model(cfg.sap_model, pretrained=False, features_only=True, out_indices=SAP_OUT_INDICES,
                            img_size=tuple(img_size), in_chans=in_chans, drop_path_rate=cfg.drop_path_rate,
                            transformer_window_size=p, transformer_grid_size=p)
    channels = tuple(sap.feature_info.channels())
    if channels != tuple(cfg.dims):
        raise ValueError(f"{cfg.sap_model} has stage channels {channels} but the DANIE config says dims="
                         f"{tuple(cfg.dims)}; set dims to the backbone's channels")
    split_qkv_first(sap)  # the same function, one copy of each qkv gradient fewer (qkv_split.py)
    return sap


class HAPEmbedding(nn.Sequential):
    """Convolutional embedding of the HAP stream to C1 x H/4 x W/4 (A6).

    'fullres' (default) keeps a fixed-width 3x3 stem at full and half resolution, which is what makes the model
    cost match the paper's GFLOPs for both S and L (spec §6.3); 'light' is two strided convs.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "fullres"):
        if kind == "fullres":
            layers = [ConvBnAct(in_channels, 32), ConvBnAct(32, 32), ConvBnAct(32, 64, stride=2),
                      ConvBnAct(64, 64), ConvBnAct(64, out_channels, stride=2)]
        else:
            layers = [ConvBnAct(in_channels, out_channels // 2, stride=2),
                      ConvBnAct(out_channels // 2, out_channels, stride=2)]
        super().__init__(*layers)


class HAPUnit(nn.Sequential):
    """O_hap = ConvBlock(HierarchicalAttention(h)) (Eq. 5)."""

    def __init__(self, channels: int, cfg: DANIEConfig):
        super().__init__()
        self.attention = HierarchicalAttention(
            channels, channel=cfg.ha_channel, spatial=cfg.ha_spatial, order=cfg.ha_order, dcal=cfg.dcal,
            dcal_gate=cfg.dcal_gate, sa_kernel=cfg.sa_kernel, ca_reduction=cfg.ca_reduction,
            ca_min_hidden=cfg.ca_min_hidden)
        self.conv_block = ConvBlock(channels, channels)


class HierarchicalAttentionalPerception(nn.Module):
    """HAP stream: embed, then per stage [stride-2 CBA (stages 2-4)] -> depth x HAPUnit (A7, A9)."""

    def __init__(self, cfg: DANIEConfig, in_chans: int = 3):
        super().__init__()
        dims = cfg.dims
        self.embed = HAPEmbedding(in_chans, dims[0], cfg.hap_embed)
        self.downsamples = nn.ModuleList(
            [nn.Identity()] + [ConvBnAct(dims[k - 1], dims[k], stride=2) for k in range(1, 4)])
        self.stages = nn.ModuleList(
            nn.Sequential(*[HAPUnit(dims[k], cfg) for _ in range(cfg.hap_depths[k])]) for k in range(4))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        h = self.embed(x)
        features = []
        for down, stage in zip(self.downsamples, self.stages):
            h = stage(down(h))
            features.append(h)
        return features
