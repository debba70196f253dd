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
    runs in fp32 (float64 for a float64 input) with autocast off and returns the input's dtype.

    Two implementation choices for a channels-last input (training's layout), the same function (issue 4):
    - positions-major: S is read as (H*W) x C, a view of a channels-last tensor, and attn @ S is computed as
      S_pos @ attn^T, which lands in channels-last again: no layout copies either way.
    - split over positions: E = S S^T is a C x C product with an inner size of H*W. cuBLAS ran it on the H100
      as one fp32 kernel of few tiles (4 calls of 345 us, 4.7 TFLOP/s). Cutting the positions into
      `position_chunks` pieces gives a batch of smaller products whose partial energies are summed, as a
      split-K GEMM would; autograd then splits the backward's dE/dattn product the same way.
    An NCHW input (export, NCHW benchmarks) takes the channels-major form, a view there.
    """

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        device = s.device.type
        with torch.autocast(device, enabled=False) if device in _AUTOCAST_DEVICES else nullcontext():
            q = s.to(torch.promote_types(s.dtype, torch.float32))  # fp32, or float64 for float64 checks
            if s.is_contiguous(memory_format=torch.channels_last):
                out = channel_attention_positions_major(q)
            else:
                out = channel_attention_channels_major(q)
            es = self.gamma * out + q  # Eq. 7, in the input's memory format
        return es.to(s.dtype)


def channel_attention_positions_major(q: torch.Tensor) -> torch.Tensor:
    """attn @ S (Eq. 6-7) for a channels-last S, split over `position_chunks` pieces of its positions."""
    b, c, h, w = q.shape
    k = position_chunks(h * w, c)
    s_pos = q.permute(0, 2, 3, 1).reshape(b * k, h * w // k, c)  # k chunks of positions x channels, a view
    energy = torch.bmm(s_pos.mT, s_pos)  # Eq. 6: S1 . S2, C x C per chunk
    if k > 1:
        energy = energy.view(b, k, c, c).sum(dim=1)
    attn = torch.softmax(-energy, dim=-1)  # = softmax(max(energy) - energy), DANet's CAM
    attn_t = attn.mT if k == 1 else attn.mT.unsqueeze(1).expand(b, k, c, c).reshape(b * k, c, c)
    return torch.bmm(s_pos, attn_t).view(b, h, w, c).permute(0, 3, 1, 2)


def channel_attention_channels_major(q: torch.Tensor) -> torch.Tensor:
    """attn @ S (Eq. 6-7) for an NCHW S, read as C x (H*W)."""
    b, c, h, w = q.shape
    s_ch = q.reshape(b, c, h * w)
    attn = torch.softmax(-torch.bmm(s_ch, s_ch.mT), dim=-1)  # Eq. 6, softmax as in DANet's CAM
    return torch.bmm(attn, s_ch).view(b, c, h, w)


def position_chunks(positions: int, channels: int, max_chunks: int = 64) -> int:
    """How many pieces ES splits its H*W positions into: a power of two that divides them, each piece keeping at
    least 4 x C positions (1 when the positions are few next to the channels: the product is then well shaped)."""
    k = 1
    while k < max_chunks and positions % (2 * k) == 0 and positions // (2 * k) >= 4 * channels:
        k *= 2
    return k


class GlobalContextGate(GlobalContext):
    """EH: GCNet context block with the 'channel_mul' fusion and GELU (A16); eh = W_g ⊙ h, no residual add.

    timm's GlobalContext is exactly Eq. 8 (softmax-pooled context over 1x1 conv logits) followed by Eq. 9
    (1x1 conv C -> C/4, LayerNorm, GELU, 1x1 conv C/4 -> C, sigmoid gate).
    """

    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__(channels, use_attn=True, fuse_add=False, fuse_scale=True, rd_ratio=ratio,
                         act_layer=nn.GELU)
