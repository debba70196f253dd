"""Test-time mirroring in one batch: a 2D tile and its three flips through the network at once.

nnU-Net's predictor mirrors each tile for test-time augmentation by calling the network four times, one after the
other, at batch 1: on the tile x, then on flip(x, (2,)), flip(x, (3,)) and flip(x, (2, 3)) (its
`_internal_maybe_mirror_and_predict`). At batch 1 a DANIE forward leaves most of a GPU idle (on an H100, DANIE-S
took 8.9 ms a tile with CUDA graphs, and 2.75 ms a slice at batch 12), and `nnUNetv2_predict` cannot be told to
batch its calls. So at the tile's first call the network runs the tile and its three flips as one batch of four,
returns the tile's output and keeps the other three, each with the input it belongs to. A later call whose input
is bitwise equal to one of the kept inputs gets that input's output: every output is the network's output for
exactly the input it is returned for (the batch of four can round differently from a batch of one, as cuDNN
may pick other kernels for it; on CPU in float64 the two agree to 1e-15, tests/test_mirror_batching.py).

A caller that does not mirror (`nnUNetv2_predict --disable_tta`) leaves the kept flips unasked: after
`MISSES_TO_STOP` such tiles in a row this stops batching for good, having cost that many tiles three extra
slices each. Used only where it applies: eval mode, no autograd, a batch of one tile, outside torch.compile.
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch
from torch import nn

# in the order nnU-Net's predictor asks for them with its 2D mirror axes (0, 1): combinations of dims 2 and 3
FLIPS_2D: Tuple[Tuple[int, ...], ...] = ((2,), (3,), (2, 3))
MISSES_TO_STOP = 2


def _split(out: Any, n: int) -> List[Any]:
    """The batch output as n single-slice outputs (a tensor, or the deep-supervision list of tensors)."""
    if isinstance(out, torch.Tensor):
        return list(out.split(1))
    if isinstance(out, (list, tuple)):
        per_output = [_split(o, n) for o in out]
        return [type(out)(o[i] for o in per_output) for i in range(n)]
    raise TypeError(f"mirror batching supports tensor, list or tuple outputs, got {type(out).__name__}")


class MirrorBatching:
    """A network's kept flipped tiles and their outputs. Not part of the module's state: copies start empty."""

    def __init__(self, flips: Tuple[Tuple[int, ...], ...] = FLIPS_2D, misses_to_stop: int = MISSES_TO_STOP):
        if misses_to_stop < 1:
            raise ValueError(f"misses_to_stop must be >= 1, got {misses_to_stop}")
        self.flips, self.misses_to_stop = flips, misses_to_stop
        self.kept: List[Tuple[torch.Tensor, Any]] = []
        self.misses = 0
        self.stopped = False
        self.batches = self.hits = 0

    def __getstate__(self) -> dict:
        return {"flips": self.flips, "misses_to_stop": self.misses_to_stop}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __deepcopy__(self, memo) -> "MirrorBatching":
        return MirrorBatching(self.flips, self.misses_to_stop)

    def applies(self, module: nn.Module, x: torch.Tensor) -> bool:
        # is_compiling first: under torch.compile it is a constant False for Dynamo
        return (not torch.compiler.is_compiling() and not module.training and not torch.is_grad_enabled()
                and x.ndim == 4 and x.shape[0] == 1 and not self.stopped)

    def _take(self, x: torch.Tensor) -> Any:
        for i, (kept_input, output) in enumerate(self.kept):
            if (kept_input.shape == x.shape and kept_input.dtype == x.dtype and kept_input.device == x.device
                    and torch.equal(kept_input, x)):
                del self.kept[i]
                self.hits += 1
                return output
        return None

    def __call__(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        output = self._take(x)
        if output is not None:
            return output
        if self.kept:  # a new tile while flips of the last one are still kept: the caller does not mirror them
            self.kept.clear()
            self.misses += 1
            self.stopped = self.misses >= self.misses_to_stop
        else:
            self.misses = 0
        if self.stopped:
            return forward(x)
        flipped = [torch.flip(x, dims) for dims in self.flips]
        outputs = _split(forward(torch.cat([x] + flipped)), 1 + len(flipped))
        self.kept = list(zip(flipped, outputs[1:]))
        self.batches += 1
        return outputs[0]
