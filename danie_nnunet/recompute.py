"""Activation recomputation (gradient checkpointing) for the parts of DANIE that hold most activations.

The same function: forward values and gradients are unchanged. Autograd keeps only the input of each
recomputed segment and runs the segment again during the backward pass. Most of DANIE's activations sit in the
first three MaxViT stages and the full- and half-resolution HAP stem: recomputing them (DEFAULT_SEGMENTS) took
DANIE-L's training peak at 512x512, batch 12 from 20.9 to 8.65 GiB on an H200, for 36 % longer steps
(docs/performance.md). The trainers recompute only as much as the card needs: `memory.plan_recompute` picks
from `recompute_candidates` the segments that save the most memory per byte of recomputed work.

BatchNorm layers update their running statistics once per step, as without recomputation. In eager mode the
second forward of a segment runs its BatchNorms with momentum 0, so the running statistics and the batch
counter stay as the first forward left them. Under torch.compile, AOTAutograd moves the
recomputation into the backward graph, which has no buffer updates.
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Iterator, List, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# the segments that hold most activations in the bench's breakdown (SAP stages 0-2 and the HAP stem,
# full and half resolution); SAP stage 3 and the decoder are cheap to keep
DEFAULT_SEGMENTS = ("sap.stages_0", "sap.stages_1", "sap.stages_2", "hap.embed", "hap.stages.0")
# the finer segments `memory.plan_recompute` chooses from: each MaxViT block's MBConv and its window and grid
# attention (an MBConv frees twice as many bytes per byte of recomputed traffic as an attention block), the SAP
# stem, the HAP stem and stages, and the Joint Preservation blocks and aggregations
_CANDIDATE = re.compile(r"sap\.stem|sap\.stages_\d+\.blocks\.\d+\.(conv|attn_block|attn_grid)"
                        r"|hap\.embed|hap\.stages\.\d+|joint_preservation\.(blocks|aggregations)\.\d+")


@contextlib.contextmanager
def _batchnorm_frozen_statistics(module: nn.Module) -> Iterator[None]:
    # momentum 0 keeps the running statistics as they are (and saves the same tensors for backward as the first
    # forward, which checkpoint's consistency check needs); the batch counter's extra increment is undone
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        counters = [m.num_batches_tracked for m in norms if m.num_batches_tracked is not None]
        if counters:
            torch._foreach_sub_(counters, 1)


def _checkpointed_forward(module: nn.Module, forward, *args):
    if not (torch.is_grad_enabled() and module.training):
        return forward(module, *args)
    if torch.compiler.is_compiling():
        return checkpoint(forward, module, *args, use_reentrant=False)
    return checkpoint(forward, module, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _batchnorm_frozen_statistics(module)))


def recompute_candidates(network: nn.Module) -> List[str]:
    """The segments of `network` that recomputation can choose from, in forward order (none nested in another)."""
    return [name for name, _ in network.named_modules() if _CANDIDATE.fullmatch(name)]


def set_recompute(network: nn.Module, segments: Sequence[str] = DEFAULT_SEGMENTS) -> list:
    """Recompute the named submodules of `network` in the backward pass (an empty `segments` switches it off).

    The state dict, the module tree and eval-mode inference are unchanged. Returns the segments in effect;
    segments in a part the configuration switches off (an attribute set to None, e.g. `hap` in row A.1) are skipped,
    other names the network does not have are an error.
    """
    modules = dict(network.named_modules())
    for name, module in modules.items():  # switch everything off first: segments may change between calls
        if "forward" in vars(module) and getattr(module, "_danie_recompute", False):
            del module.forward
            module._danie_recompute = False
    active = present_segments(network, segments)
    for name in active:
        module = modules[name]
        # a partial, not a closure: deepcopy and pickle then bind the copy's forward to the copy
        module.forward = functools.partial(_checkpointed_forward, module, type(module).forward)
        module._danie_recompute = True
    return active


def present_segments(network: nn.Module, segments: Sequence[str]) -> List[str]:
    """`segments` without those in a part the configuration switches off (an attribute set to None, e.g. `hap` in
    row A.1); other names the network does not have are an error."""
    modules = dict(network.named_modules())
    present = []
    for name in segments:
        if getattr(network, name.split(".")[0], False) is None:  # a stream switched off (A.1 has no HAP)
            continue
        if name not in modules:
            raise ValueError(f"no submodule {name!r} to recompute; segments are module names such as "
                             f"{', '.join(DEFAULT_SEGMENTS)}")
        present.append(name)
    return present
