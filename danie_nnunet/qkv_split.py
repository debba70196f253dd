"""MaxViT's attention with q, k and v split before they are transposed, so that their gradients are stacked
straight into the qkv projection's layout.

timm's `AttentionCl` (channels-last MaxViT, the SAP stream) takes q, k, v as
`qkv(x).reshape(B, N, 3, H, d).transpose(1, 3).unbind(2)`: (B, H, N, d) views of the projection's
(B, N, 3, H, d) output. Autograd undoes the views in reverse order: it stacks the three gradients into a
(B, H, 3, N, d) tensor, transposes that back, and the projection's backward, which needs (B*N, 3C) rows, copies
it a second time. Splitting first and transposing each part (`unbind(2)`, then `transpose(1, 2)`) gives q, k, v
with the same sizes, strides and values, so the forward is unchanged to the bit; the backward stacks the gradients
into a contiguous (B, N, 3, H, d) tensor that already is the projection's (B*N, 3C) rows, and the second copy is
gone (eager: one kernel fewer per attention; compiled, one generated kernel fewer and a qkv gradient's read and write
less per attention, DANIE-S's 22 in all: docs/performance.md). The same holds for timm's head-first layout
(`view(B, N, H, 3d)`, chunked in three).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.models.maxxvit import AttentionCl
from torch import nn


class AttentionClSplitFirst(AttentionCl):
    """timm's `AttentionCl`, its q, k, v split before they are transposed (same parameters and state_dict)."""

    def forward(self, x: torch.Tensor, shared_rel_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.fused_attn:  # timm's explicit softmax(q k^T) path: left as timm has it
            return super().forward(x, shared_rel_pos)
        B = x.shape[0]
        restore_shape = x.shape[:-1]
        qkv = self.qkv(x)
        if self.head_first:
            parts = qkv.view(B, -1, self.num_heads, self.dim_head * 3).chunk(3, dim=3)
        else:
            parts = qkv.reshape(B, -1, 3, self.num_heads, self.dim_head).unbind(2)
        q, k, v = (part.transpose(1, 2) for part in parts)
        attn_bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
        # F's attribute, looked up per call: the benches count attention by replacing it
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias,
                                           dropout_p=self.attn_drop.p if self.training else 0.)
        x = x.transpose(1, 2).reshape(restore_shape + (-1,))
        return self.proj_drop(self.proj(x))


def split_qkv_first(module: nn.Module) -> int:
    """Make each timm `AttentionCl` in `module` an `AttentionClSplitFirst`, in place (the same parameters, buffers
    and state_dict keys); returns how many it changed."""
    changed = 0
    for m in module.modules():
        if type(m) is AttentionCl:
            m.__class__ = AttentionClSplitFirst
            changed += 1
    return changed
