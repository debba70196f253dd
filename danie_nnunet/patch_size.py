"""Which 2D input sizes DANIE takes, and the MaxViT partition (window = grid) size per axis (spec §2.9).

Four stride-2 steps after the stride-2 stem make each axis a multiple of 32. timm fixes MaxViT's window and
grid at construction, so the network is built for one patch size; the partition size p of an axis must divide
that axis / 32 at every stage.
"""
from __future__ import annotations

from typing import Sequence, Tuple

STRIDE = 32


def partition_size(dim: int) -> int:
    """Largest divisor of dim/32 in [4, 8] (close to the pretrained 7x7 windows); dim/32 itself if none exists."""
    n = dim // STRIDE
    return next((p for p in range(8, 3, -1) if n % p == 0), n)


def partition_sizes(img_size: Sequence[int]) -> Tuple[int, int]:
    return tuple(partition_size(int(d)) for d in img_size)


def round_up_patch_size(patch_size: Sequence[int]) -> Tuple[int, ...]:
    """Round each axis up to the next multiple of 32 (nnU-Net pads images that are smaller than the patch)."""
    return tuple(max(STRIDE, -(-int(d) // STRIDE) * STRIDE) for d in patch_size)


def check_patch_size(img_size: Sequence[int]) -> Tuple[int, int]:
    """Return img_size as a tuple of 2 ints, or raise ValueError naming the nearest valid sizes."""
    size = tuple(int(d) for d in img_size)
    if len(size) != 2:
        raise ValueError(f"DANIE is a 2D network: img_size needs 2 axes (H, W), got {tuple(img_size)}")
    bad = [d for d in size if d < STRIDE or d % STRIDE]
    if bad:
        hints = ", ".join(f"{d} -> {max(STRIDE, d // STRIDE * STRIDE)} or {-(-d // STRIDE) * STRIDE}"
                          for d in dict.fromkeys(bad))
        raise ValueError(f"DANIE input size {size} is not a multiple of {STRIDE} on each axis "
                         f"(nearest valid sizes: {hints}); nnU-Net users: DANIETrainer rounds the plans' "
                         f"patch size up for you")
    return size
