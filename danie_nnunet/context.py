"""The two light-weight enhancers of Joint Preservation (paper §3.4, spec §2.4-2.5).

ChannelSelfAttention is ES (Eq. 6-7) on the SAP features; GlobalContextGate is EH (Eq. 8-9) on the HAP features.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from timm.layers import GlobalContext
from torch import nn

# device types with autocast, read once at import: torch.amp.is_autocast_available is a C function that
# torch.compile may not trace (torch 2.11 reported an untraceable builtin in DANIE; docs/performance.md)
_AUTOCAST_DEVICES = frozenset(d for d in ("cpu", "cuda", "xpu", "mps", "hpu") if torch.amp.is_autocast_available(d))


class ChannelSelfAttention(nn.Module):
    """ES: channel self-attention of DANet's CAM module, es = gamma * (attn @ s) + s, gamma learned from 0.

    Follows DANet's code rather than Eq. 6 literally (A15): the softmax over the last axis takes
    max(energy) - energy, which equals softmax(-energy) because softmax is shift-invariant per row (the gradient
    through the max is zero), so it is written as the latter (tested against DANet's form in float64). The C x C
    energy sums over all H*W positions (16,384 at stride 4 of a 512 patch), which overflows fp16, so the block
    runs in fp32 with autocast off and returns the input's dtype.
    """

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        b, c, h, w = s.shape
        device = s.device.type
        with torch.autocast(device, enabled=False) if device in _AUTOCAST_DEVICES else nullcontext():
            q = s.float().reshape(b, c, h * w)
            energy = torch.bmm(q, q.transpose(1, 2))  # Eq. 6: S1 . S2, B x C x C
            attn = torch.softmax(-energy, dim=-1)  # = softmax(max(energy) - energy), DANet's CAM
            out = torch.bmm(attn, q).reshape(b, c, h, w)
            es = self.gamma * out + s.float()  # Eq. 7
        # in the input's memory format: the bmm gives NCHW, which made the whole aggregation and the Joint
        # Preservation convolutions' inputs NCHW in a channels-last network
        fmt = torch.channels_last if s.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return es.to(dtype=s.dtype, memory_format=fmt)


class GlobalContextGate(GlobalContext):
    """EH: GCNet context block with the 'channel_mul' fusion and GELU (A16); eh = W_g ⊙ h, no residual add.

    timm's GlobalContext is exactly Eq. 8 (softmax-pooled context over 1x1 conv logits) followed by Eq. 9
    (1x1 conv C -> C/4, LayerNorm, GELU, 1x1 conv C/4 -> C, sigmoid gate).
    """

    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__(channels, use_attn=True, fuse_add=False, fuse_scale=True, rd_ratio=ratio,
                         act_layer=nn.GELU)
