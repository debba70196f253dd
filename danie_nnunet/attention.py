"""HierarchicalAttention: the local spatial-channel attention of the HAP stream (paper Eq. 2-5, spec §2.3)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttentionMLP(nn.Module):
    """sigma(MLP(P^s(x))) for both pooling branches; the MLP is shared by them (Eq. 2, A11)."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x_max: torch.Tensor, x_avg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # max with indices, as CBAM's code (max_pool2d / torch.max): its backward routes the gradient through the
        # argmax, where amax's compares the input with its max again, in a kernel that met Inductor's CPU bf16
        # miscompile (bench/repro_inductor_nan.py)
        pooled_max = x_max.flatten(2).max(dim=2, keepdim=True).values.unsqueeze(-1)
        pooled_avg = x_avg.mean(dim=(2, 3), keepdim=True)
        # the shared MLP runs once on the two branches as a batch of 2B: two convolutions each way per unit, not four
        # (split by slicing: chunk(2) of a symbolic 2B guards the batch size, and the ONNX export loses its batch axis)
        a = torch.sigmoid(self.mlp(torch.cat([pooled_max, pooled_avg])))
        b = x_max.shape[0]
        return a[:b], a[b:]


class SpatialAttentionConv(nn.Module):
    """sigma(Conv(P^c(x))) for one pooling branch: a 1-channel conv over the channel-pooled map (Eq. 3, A10)."""

    def __init__(self, pool: str, kernel_size: int = 7):
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=True)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return x.max(dim=1, keepdim=True).values if self.pool == "max" else x.mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(self.pooled(x)))


def spatial_attention_pair(spatial_max: SpatialAttentionConv, spatial_avg: SpatialAttentionConv,
                           x_max: torch.Tensor, x_avg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both branches' spatial attention maps (Eq. 3) from one grouped convolution of the 2-channel pooled map.

    The same function as calling the two modules with their own weights, in one convolution call each way instead
    of two: a compiled training step is bound by the host launching such calls (docs/performance.md).
    """
    pooled = torch.cat([spatial_max.pooled(x_max), spatial_avg.pooled(x_avg)], dim=1)
    if x_max.is_contiguous(memory_format=torch.channels_last):  # cat of two 1-channel maps may come out NCHW
        pooled = pooled.contiguous(memory_format=torch.channels_last)
    conv_max, conv_avg = spatial_max.conv, spatial_avg.conv
    maps = F.conv2d(pooled, torch.cat([conv_max.weight, conv_avg.weight]), torch.cat([conv_max.bias, conv_avg.bias]),
                    padding=conv_max.padding, groups=2)
    return torch.sigmoid(maps).chunk(2, dim=1)


class DynamicCalibrationGate(nn.Module):
    """A_d = sigma(c*(w_max O_max + w_avg O_avg)) (Eq. 4-5); the gate re-weights the ORIGINAL features h.

    `gate` picks the shape of A_d the paper leaves open (A13): 'full' C x H x W (default), 'channel' C x 1 x 1
    (global pooling first), 'spatial' 1 x H x W.
    """

    def __init__(self, channels: int, gate: str = "full"):
        super().__init__()
        self.gate = gate
        self.w_max = nn.Parameter(torch.tensor(0.5))  # A12: learnable scalars, an even mix at init
        self.w_avg = nn.Parameter(torch.tensor(0.5))
        self.proj = nn.Conv2d(channels, 1 if gate == "spatial" else channels, 1, bias=True)

    def forward(self, h: torch.Tensor, o_max: torch.Tensor, o_avg: torch.Tensor) -> torch.Tensor:
        o_d = self.w_max * o_max + self.w_avg * o_avg  # Eq. 4
        if self.gate == "channel":
            o_d = o_d.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.proj(o_d)) * h  # Eq. 5 (the ConvBlock that follows belongs to the stage)


class HierarchicalAttention(nn.Module):
    """Channel then spatial attention on separate max and avg branches, fused by dynamic calibration.

    With `order='spatial_first'` the two attentions swap places (Table 6 B.1/B.2); `channel=False` /
    `spatial=False` drop one of them (Table 5 A.4/A.3); `dcal=False` returns O_max + O_avg with no learnable
    mix and no gate (Table 6 B.1/B.3, spec §4 note).
    """

    def __init__(self, channels: int, channel: bool = True, spatial: bool = True, order: str = "channel_first",
                 dcal: bool = True, dcal_gate: str = "full", sa_kernel: int = 7, ca_reduction: int = 16,
                 ca_min_hidden: int = 8):
        super().__init__()
        steps = [name for name, on in (("channel", channel), ("spatial", spatial)) if on]
        self.steps = tuple(reversed(steps)) if order == "spatial_first" else tuple(steps)
        self.channel_att = ChannelAttentionMLP(channels, ca_reduction, ca_min_hidden) if channel else None
        self.spatial_max = SpatialAttentionConv("max", sa_kernel) if spatial else None
        self.spatial_avg = SpatialAttentionConv("avg", sa_kernel) if spatial else None
        self.calibration = DynamicCalibrationGate(channels, dcal_gate) if dcal else None
        # parameter-free hook points on the outputs of local channel attention (m = A^c ⊙ h) and local spatial
        # attention (O = A^s ⊙ m), passed once per pooling branch; Grad-CAM (`danie_nnunet.cam`) hooks them
        self.channel_out = nn.Identity()
        self.spatial_out = nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # the max and avg branches step together, so each step's two convolutions run as one (same function)
        x_max = x_avg = h
        for step in self.steps:
            if step == "channel":
                a_max, a_avg = self.channel_att(x_max, x_avg)
                x_max, x_avg = self.channel_out(a_max * x_max), self.channel_out(a_avg * x_avg)  # Eq. 2: m = A^c ⊙ h
            else:
                a_max, a_avg = spatial_attention_pair(self.spatial_max, self.spatial_avg, x_max, x_avg)
                x_max, x_avg = self.spatial_out(a_max * x_max), self.spatial_out(a_avg * x_avg)  # Eq. 3: O = A^s ⊙ m
        if self.calibration is None:
            return x_max + x_avg
        return self.calibration(h, x_max, x_avg)
