"""What a training step dispatches: operators, and among them the library calls that no compiler fuses.

torch.compile fuses the elementwise work, normalisations and copies of a step into a few generated kernels, but
every convolution, matrix product and attention stays one cuDNN, cuBLAS or attention-kernel call, forward and
backward, and each call costs the host time to launch. On an H100 the compiled DANIE step is bound by these
launches, not by the GPU (docs/performance.md), so how many a network makes per step is the floor of its step.
Counted eagerly, the numbers belong to the network and its loss and are the same on any device: CUDA runs one
attention kernel per `scaled_dot_product_attention` forward and one backward, while the CPU and the meta device
run its math decomposition (matrix products and a softmax); there the count takes each call as CUDA's one kernel
each way, so a count on the meta device (instant, no memory) is CUDA's.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

LIBRARY_KINDS = ("convolution", "matmul", "attention")
_LIBRARY_OPS = {"convolution": "convolution", "convolution_backward": "convolution", "mm": "matmul",
                "addmm": "matmul", "bmm": "matmul", "baddbmm": "matmul"}


def library_kind(op_name: str):
    """'convolution', 'matmul', 'attention' or None for an aten operator's name (overload packet)."""
    if "attention" in op_name:  # _scaled_dot_product_{efficient,flash,cudnn}_attention and their backwards
        return "attention"
    return _LIBRARY_OPS.get(op_name)


class DispatchCount(TorchDispatchMode):
    """Counts the operators dispatched while active: 'operators' (views excluded, they launch nothing), one entry
    per library kind, and among the operators 'casts' (`_to_copy`: dtype casts such as autocast's) and
    'allocations' (`empty*`, which launch nothing either). The mode also sees the backward's operators, which
    autograd runs with its state."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not self.paused:
            self.counts["operators"] += 1
            name = func.overloadpacket.__name__
            kind = library_kind(name)
            if kind:
                self.counts[kind] += 1
            if name == "_to_copy":
                self.counts["casts"] += 1
            elif name.startswith("empty"):
                self.counts["allocations"] += 1
        return func(*args, **(kwargs or {}))

    def fused_call(self, fn: Callable[[], object]):
        """Runs fn counted as one attention call, whatever it dispatches."""
        self.counts["operators"] += 1
        self.counts["attention"] += 1
        self.paused = True
        try:
            return fn()
        finally:
            self.paused = False


def _as_one_attention_call(fn: Callable[[], object]):
    # the count active when this runs (torch's dispatch mode stack): a backward is often counted in another
    # context than its forward
    counting = _get_current_dispatch_mode()
    return counting.fused_call(fn) if isinstance(counting, DispatchCount) else fn()


class _AttentionAsOneCall(torch.autograd.Function):
    """scaled_dot_product_attention off CUDA, counted as the one kernel CUDA launches forward and backward; the
    backward recomputes the forward (with dropout it would draw another mask: DANIE's attention has none)."""

    @staticmethod
    def forward(ctx, kwargs, q, k, v, mask):
        ctx.kwargs = kwargs
        ctx.save_for_backward(q, k, v, mask)
        return _as_one_attention_call(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs))

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_(n) if t is not None else None
                  for t, n in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])]

        def recompute():
            with torch.enable_grad():
                out = F.scaled_dot_product_attention(*inputs[:3], attn_mask=inputs[3], **ctx.kwargs)
                wanted = [t for t in inputs if t is not None and t.requires_grad]
                grads = iter(torch.autograd.grad(out, wanted, grad))
            return [next(grads) if t is not None and t.requires_grad else None for t in inputs]

        return (None, *_as_one_attention_call(recompute))


class _CountAttentionAsCUDA(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention and args[0].device.type != "cuda":
            q, k, v, *rest = args
            mask = rest[0] if rest else kwargs.pop("attn_mask", None)
            return _AttentionAsOneCall.apply(kwargs, q, k, v, mask)
        return func(*args, **kwargs)


@contextmanager
def counting_dispatch():
    """A DispatchCount (its .counts fill while the context is active), attention counted as on CUDA."""
    with _CountAttentionAsCUDA(), DispatchCount() as counting:
        yield counting


def count_dispatch(fn: Callable[[], object]) -> Counter:
    with counting_dispatch() as counting:
        fn()
    return counting.counts


def count_training_step(net: torch.nn.Module, loss_fn: Callable, x: torch.Tensor, targets) -> dict:
    """{'forward', 'loss', 'backward'}: what each part of one training step dispatches (the optimiser is left
    out: on CUDA the trainers' optimisers update every parameter in a few multi-tensor launches)."""
    net.train()
    net.zero_grad(set_to_none=True)
    result = {}
    with counting_dispatch() as counting:
        out = net(x)
    result["forward"] = counting.counts
    with counting_dispatch() as counting:
        loss = loss_fn(out, targets)
    result["loss"] = counting.counts
    with counting_dispatch() as counting:
        loss.backward()
    result["backward"] = counting.counts
    net.zero_grad(set_to_none=True)
    return result
