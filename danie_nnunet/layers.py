"""Small building blocks shared by the HAP stream and Joint Preservation (spec §1 notation)."""
from __future__ import annotations

from torch import nn


class ConvBnAct(nn.Sequential):
    """CBA(cin, cout, k, s): Conv2d (no bias, padding k//2) -> BatchNorm2d -> GELU (A27)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class ConvBlock(nn.Sequential):
    """The paper's ConvBlock (Eq. 5, 11): two 3x3 conv, each followed by BN and GELU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBnAct(in_channels, out_channels), ConvBnAct(out_channels, out_channels))


class InputAdapter(nn.Sequential):
    """Learnable Conv1x1(Cin -> 3) + BN + ReLU in front of both streams when Cin != 3 (A5, CASCADE/MERIT)."""

    def __init__(self, in_channels: int, out_channels: int = 3):
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=True), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))
