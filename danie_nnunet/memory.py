"""Training memory of DANIE, measured from the network itself rather than guessed from nnU-Net's U-Net.

The per-slice footprint is what autograd keeps for the backward pass: every tensor saved by a forward pass of
one slice (network in the autocast dtype, the four full-resolution heads, softmax and cross-entropy of the loss
in fp32), summed once per distinct tensor. It is measured on the meta device, so it costs no memory and about
half a second at any patch size. Fixed costs are the fp32 weights, their gradients and AdamW's two moments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from .config import DANIEConfig
from .network import create_danie

GIB = 2 ** 30
BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight, gradient, AdamW exp_avg and exp_avg_sq
HEADROOM = 0.85  # share of the card's memory planned for; the rest: CUDA context, allocator, cuDNN workspaces


@dataclass
class MemoryEstimate:
    params: int
    fixed_gib: float
    per_slice_gib: float

    def total_gib(self, batch_size: int) -> float:
        return self.fixed_gib + batch_size * self.per_slice_gib

    def max_batch_size(self, gpu_memory_gib: float) -> int:
        """Largest batch whose estimate fits in HEADROOM of the card (0 if not even one slice fits)."""
        return max(0, int((gpu_memory_gib * HEADROOM - self.fixed_gib) // self.per_slice_gib))


def _saved_bytes(net: torch.nn.Module, batch: int, in_chans: int, patch_size: Sequence[int],
                 dtype: torch.dtype) -> int:
    with torch.device("meta"):
        x = torch.empty(batch, in_chans, *patch_size, dtype=dtype)
        target = torch.zeros(batch, *patch_size, dtype=torch.long)
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t  # views share their base's memory
        saved[id(base)] = base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, *heads = net(x)
        for head in heads:  # what nnU-Net's Dice + CE keep per head
            logits = head.float()
            F.cross_entropy(logits, target)
            logits.softmax(1)
    return sum(saved.values())


def estimate_training_memory(variant: Union[str, DANIEConfig], patch_size: Sequence[int], in_chans: int = 1,
                             num_classes: int = 2, dtype: torch.dtype = torch.bfloat16) -> MemoryEstimate:
    """Fixed and per-slice training memory; the per-slice part is the difference of batch 2 and batch 1, so
    tensors saved once per step (the low-precision weight copies) count as fixed."""
    with torch.device("meta"):
        net = create_danie(variant, patch_size, in_chans, num_classes, deep_supervision=True).to(dtype)
    one, two = (_saved_bytes(net, b, in_chans, patch_size, dtype) for b in (1, 2))
    params = sum(p.numel() for p in net.parameters())
    return MemoryEstimate(params, (params * BYTES_PER_PARAM + 2 * one - two) / GIB, (two - one) / GIB)
