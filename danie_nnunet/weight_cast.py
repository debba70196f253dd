"""One low-precision copy of the weights per training step, instead of autocast casting each weight where it is used.

Under autocast every convolution, linear layer and matrix product casts its fp32 weight and bias to the autocast
dtype as it runs: one kernel per tensor in the forward pass, and one in the backward pass that widens the tensor's
gradient back to fp32. Eager, autocast's cache makes that one cast per weight and step; compiled, Inductor cannot
fold a cast into the cuDNN or cuBLAS call that reads its output, so each is a generated kernel of its own. DANIE has
about 350 such tensors (351 for DANIE-S under a CPU's autocast), some 700 launches of a compiled step that do almost
no work, on a step bound by launching its work (docs/performance.md).

`LowPrecisionWeights` keeps a low-precision copy of exactly the parameters autocast casts (`castable_parameters`),
refreshes all of them from the fp32 parameters with one multi-tensor copy whenever the network is called through
it, runs the network on them (`torch.func.functional_call`), and `gradients_to_parameters()` widens their
gradients into the fp32 parameters' `.grad` with another. The network's parameters stay fp32 and its own:
state_dict, optimiser, gradient clipping and checkpoints do not change.

It is the same function: rounding an fp32 tensor to bf16 gives the same bf16 tensor whether autocast does it at the
layer or this does it before the call, and its gradient reaches the fp32 parameter through the same exact widening,
so an eager step is bitwise the step without it (tests/test_weight_cast.py). Which parameters: those whose only use
in one forward pass under autocast is autocast's cast to its dtype, recorded on the training device with the
training input. BatchNorm and LayerNorm weights, MaxViT's relative position tables and the weights of HAP's paired
spatial convolutions (concatenated before their cast) are used otherwise: they stay fp32 and autocast casts what it
casts of them, as before.

Not under DDP: DDP all-reduces the gradients of the parameters it wraps as they are accumulated, and those of the
copies would never reach it (`LowPrecisionWeights` refuses a DDP-wrapped network).
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _ParameterUses(TorchDispatchMode):
    """Which operators each parameter of a module is passed to while active: autocast's cast to `dtype` (an
    `_to_copy` of the parameter itself to that dtype) or anything else (views, concatenations, normalisations...)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.names = {id(p): name for name, p in module.named_parameters()}
        self.dtype = dtype
        self.cast, self.other = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        is_cast = func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == self.dtype and len(args) == 1
        for arg in tree_leaves((args, kwargs)):
            name = self.names.get(id(arg)) if isinstance(arg, torch.Tensor) else None
            if name is not None:
                (self.cast if is_cast else self.other).add(name)
        return func(*args, **kwargs)


def castable_parameters(module: nn.Module, forward: Callable[[], object], device_type: str,
                        dtype: torch.dtype = torch.bfloat16) -> List[str]:
    """The names (in `module.named_parameters()` order) of the parameters whose only use in `forward()` (one forward
    pass of `module`, run here under autocast on `device_type` in `dtype`, without gradients) is autocast's cast to
    `dtype`. The module's buffers (BatchNorm running statistics) are left as they were before the pass."""
    buffers = list(module.buffers())
    saved = [b.clone() for b in buffers]
    uses = _ParameterUses(module, dtype)
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype), uses:
            forward()
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
    return [name for name, _ in module.named_parameters() if name in uses.cast and name not in uses.other]


class LowPrecisionWeights:
    """Low-precision copies of some parameters of `module` (by name), for calling a network (the module itself, or
    torch.compile's wrapper of it) with autocast's weight casts done in one copy: `weights(network, x)` instead of
    `network(x)` under the same autocast, then `weights.gradients_to_parameters()` after the backward pass."""

    def __init__(self, module: nn.Module, names: Sequence[str], dtype: torch.dtype = torch.bfloat16):
        self.module, self.names, self.dtype = module, tuple(names), dtype
        self._slots = []  # (submodule, attribute) of each named parameter: found each call without a name walk
        for name in self.names:
            owner, _, attribute = name.rpartition(".")
            submodule = module.get_submodule(owner)
            if attribute not in submodule._parameters or submodule._parameters[attribute] is None:
                raise ValueError(f"{name!r} is not a parameter of the module")
            self._slots.append((submodule, attribute))
        self._parameters: List[nn.Parameter] = []  # what the copies were made for
        self._copies: List[nn.Parameter] = []
        self._keys: Tuple[nn.Module, List[str]] = (None, [])  # the last network called and the copies' names in it

    @classmethod
    def record(cls, module: nn.Module, forward: Callable[[], object], device_type: str,
               dtype: torch.dtype = torch.bfloat16) -> "LowPrecisionWeights":
        """The copies of what autocast casts in `forward()` (see castable_parameters)."""
        return cls(module, castable_parameters(module, forward, device_type, dtype), dtype)

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, network: nn.Module, *args, **kwargs):
        """`network(*args, **kwargs)` with the fp32 parameters replaced by their fresh low-precision copies."""
        if not self.names:
            return network(*args, **kwargs)
        if isinstance(network, nn.parallel.DistributedDataParallel):
            raise ValueError("LowPrecisionWeights cannot run a DDP-wrapped network: DDP would never all-reduce the "
                             "gradients of the copies. Call the network itself under DDP.")
        device_type = self._refresh()
        if not torch.is_autocast_enabled(device_type) or torch.get_autocast_dtype(device_type) != self.dtype:
            raise RuntimeError(f"LowPrecisionWeights holds {self.dtype} copies of what autocast casts: call it under "
                               f"torch.autocast({device_type!r}, dtype={self.dtype}) (elsewhere, call the network)")
        return functional_call(network, dict(zip(self._names_in(network), self._copies)), args, kwargs)

    def _refresh(self) -> str:
        """Copies the parameters into their low-precision copies (one multi-tensor copy); makes new copies where a
        parameter was replaced (`load_state_dict(assign=True)`) or moved or changed its layout in place (`.to()`,
        channels-last). Returns the parameters' device type."""
        parameters = [submodule._parameters[attribute] for submodule, attribute in self._slots]
        if len(parameters) != len(self._parameters) or any(
                p is not q or p.device != c.device or p.shape != c.shape or p.stride() != c.stride()
                for p, q, c in zip(parameters, self._parameters, self._copies)):
            # nn.Parameter: torch.compile treats the copies as the parameters they stand for (static addresses)
            self._copies = [nn.Parameter(torch.empty_like(p, dtype=self.dtype), requires_grad=p.requires_grad)
                            for p in parameters]
            self._parameters = parameters
            self._keys = (None, [])
        with torch.no_grad():
            torch._foreach_copy_(self._copies, parameters)
        return parameters[0].device.type

    def _names_in(self, network: nn.Module) -> List[str]:
        """The copies' parameter names in `network`, which may wrap the module (torch.compile: `_orig_mod.`)."""
        if self._keys[0] is not network:
            names = {id(p): name for name, p in network.named_parameters(remove_duplicate=False)}
            missing = [n for n, p in zip(self.names, self._parameters) if id(p) not in names]
            if missing:
                raise ValueError(f"the network called does not hold the parameters these copies are of (e.g. "
                                 f"{missing[0]!r}): call the module they were recorded for, or its compiled wrapper")
            self._keys = (network, [names[id(p)] for p in self._parameters])
        return self._keys[1]

    def gradients_to_parameters(self) -> None:
        """Widens the copies' gradients into the fp32 parameters' `.grad` (one multi-tensor copy where a parameter
        has none yet, as after zero_grad(set_to_none=True); added where it has), and drops the copies'."""
        fresh, added = [], []
        for p, c in zip(self._parameters, self._copies):
            if c.grad is not None:
                (fresh if p.grad is None else added).append((p, c.grad))
        with torch.no_grad():
            if fresh:
                widened = [torch.empty_like(p) for p, _ in fresh]  # the parameter's layout, as autograd's
                torch._foreach_copy_(widened, [g for _, g in fresh])
                for (p, _), w in zip(fresh, widened):
                    p.grad = w
            for p, g in added:
                p.grad.add_(g)
        for copy in self._copies:
            copy.grad = None

    def summary(self) -> str:
        total = sum(1 for _ in self.module.parameters())
        elements = sum(p.numel() for p in self._parameters) if self._parameters else \
            sum(s._parameters[a].numel() for s, a in self._slots)
        return (f"{len(self.names)} of the network's {total} parameters ({elements / 1e6:.1f} M values) copied to "
                f"{str(self.dtype).split('.')[-1]} once per step instead of cast by autocast where they are used")

