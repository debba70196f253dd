"""Training memory of DANIE, measured from the network itself rather than guessed from nnU-Net's U-Net.

The per-slice footprint is the peak of what autograd keeps for the backward pass: every tensor saved by a
forward pass of one slice (network in the autocast dtype, the four full-resolution heads, softmax and
cross-entropy of the loss in fp32), summed once per distinct tensor; with recomputation, the inputs that the
recomputed segments keep, and the larger of that and what the backward pass holds while it runs a segment
again. It is measured on the meta device, so it costs no memory and a second or two at any patch size. Fixed
costs are the fp32 weights, their gradients and AdamW's two moments. Against an H200: DANIE-L at 512 x 512, batch
12, 21.6 GiB estimated and 20.9 measured, 8.78 and 8.65 with DANIETrainer_recompute's segments.

`plan_recompute` fits a batch into a memory budget by recomputing as little as it can: it ranks the candidate
segments (`recompute.recompute_candidates`) by the bytes each frees per byte of memory traffic its second
forward costs (DANIE is bound by memory traffic: for whole-stage recomputation this count says +31 % and the
H200 measured +36 % step time), takes the best until the estimate fits and drops those no longer needed.

Compiled (`compiled=True`, as the DANIE trainers train by default on CUDA), the network keeps less: Inductor's
partitioner recomputes cheap elementwise work in the backward pass instead of saving its outputs. That share is
measured by `trace_compiled_share`, which runs the partitioner on the meta device (bench/compiled_memory.py:
0.79-0.81 of the eager per-slice bytes for S and L, at 64 to 512 pixels); the estimate uses COMPILED_SHARE for the
configurations it was measured for and the eager estimate for any other. Against an H100: DANIE-L at 512 x 512,
batch 12, compiled, 18.0 GiB estimated and 15.6 measured (the eager estimate, 21.6, overstated it by 38 %).
`plan_recompute` uses it to decide whether a compiled network needs recomputation at all; the segments it then
picks are planned with the eager estimate.
"""
from __future__ import annotations

import bisect
import contextlib
from collections import Counter
from dataclasses import dataclass, replace
from typing import Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .config import DANIEConfig, get_config
from .network import create_danie
from .recompute import present_segments, recompute_candidates

GIB = 2 ** 30
BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight, gradient, AdamW exp_avg and exp_avg_sq
HEADROOM = 0.85  # share of the card's memory planned for; the rest: CUDA context, allocator, cuDNN workspaces
# per-slice bytes of the compiled network against the eager one (trace_compiled_share, torch 2.14.1: S 0.796 / 0.792 /
# 0.791 and L 0.808 / 0.798 / 0.796 at 64 / 256 / 512 pixels, 1 channel; S 0.789 and L 0.795 at 224 pixels, 3
# channels), the largest rounded up; only for the configurations it was measured for
COMPILED_SHARE = 0.82
COMPILED_SHARE_MEASURED_FOR = ("S", "L")


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


@dataclass
class RecomputePlan:
    """The segments to recompute for a batch to fit `budget_gib`, the estimate with them, and what they cost: the
    recomputed forward traffic as a share of a training step's traffic (a proxy for the extra step time); whether
    it was made for the compiled network (whose estimate it has where nothing is recomputed; with recomputation
    it is the eager plan and estimate, an upper bound: see plan_recompute)."""
    segments: List[str]
    estimate: MemoryEstimate
    batch_size: int
    budget_gib: float
    extra_traffic: float
    compiled: bool = False

    @property
    def fits(self) -> bool:
        return self.estimate.total_gib(self.batch_size) <= self.budget_gib


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _base(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t  # views share their base's memory


class _Traffic(TorchDispatchMode):
    """Bytes read and written by every operator (views excluded), by the innermost running segment."""

    def __init__(self, running: List[str]):
        super().__init__()
        self.running, self.by, self.total = running, Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views move no data; _unsafe_view is a reshape too, though its schema does not say it aliases
        if not (func.is_view or func.overloadpacket is torch.ops.aten._unsafe_view):
            moved = sum(_nbytes(t) for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                        if isinstance(t, torch.Tensor))
            self.total += moved
            self.by[self.running[-1] if self.running else ""] += moved
        return out


class _Profile:
    """What one training forward (network and loss) on the meta device keeps for the backward pass: each distinct
    saved tensor with its size, the order in which it was first saved, and the segments running at each save; each
    segment's inputs and where it starts. From it `saved_peak` computes the peak for any set of recomputed
    segments without running them: at the start of the backward pass every kept tensor is alive; when the backward
    pass reaches a recomputed segment (in reverse forward order), what was kept before it is alive together with
    everything its second forward saves again."""

    def __init__(self, net: torch.nn.Module, batch: int, in_chans: int, patch_size: Sequence[int],
                 dtype: torch.dtype, segments: Sequence[str], traffic: bool = False):
        with torch.device("meta"):
            x = torch.empty(batch, in_chans, *patch_size, dtype=dtype)
            target = torch.zeros(batch, *patch_size, dtype=torch.long)
        self.size: Dict[int, int] = {}
        self.order: Dict[int, int] = {}
        self.stacks: Dict[int, List[frozenset]] = {}
        self.inputs: Dict[str, List[int]] = {s: [] for s in segments}
        self.inside: Dict[str, set] = {s: set() for s in segments}  # saved while the segment runs
        self.start: Dict[str, int] = {}
        self.forward_traffic_by: Counter = Counter()
        self.step_traffic = 0
        self._alive: List[torch.Tensor] = []
        running: List[str] = []
        modules = dict(net.named_modules())
        hooks = []
        for name in segments:
            def enter(module, args, name=name):
                running.append(name)
                self.start.setdefault(name, len(self.order))
                for a in args:
                    if isinstance(a, torch.Tensor):
                        key = self._add(_base(a))
                        self.inputs[name].append(key)
            hooks.append(modules[name].register_forward_pre_hook(enter))
            hooks.append(modules[name].register_forward_hook(lambda module, args, output: running.pop() and None))

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = self._add(_base(t))
            self.stacks.setdefault(key, []).append(frozenset(running))
            for name in running:
                self.inside[name].add(key)
            return t

        mode = _Traffic(running) if traffic else contextlib.nullcontext()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
                _, *heads = net(x)
                loss = 0
                for head in heads:  # what nnU-Net's Dice + CE keep per head
                    logits = head.float()
                    loss = loss + F.cross_entropy(logits, target) + logits.softmax(1).mean()
            if traffic:
                self.forward_traffic_by = mode.by
                with _Traffic([]) as backward:
                    loss.backward()
                self.step_traffic = mode.total + backward.total
                net.zero_grad(set_to_none=True)
        finally:
            for h in hooks:
                h.remove()

    def _add(self, base: torch.Tensor) -> int:
        key = id(base)
        if key not in self.size:
            self.size[key], self.order[key] = _nbytes(base), len(self.order)
            self._alive.append(base)  # an id is only unique while its tensor lives (segment inputs may not)
        return key

    def saved_peak(self, recompute: Sequence[str] = ()) -> int:
        """Peak bytes of saved tensors during the backward pass with the `recompute` segments (not nested)."""
        recomputed = set(recompute)
        kept = {k for k, stacks in self.stacks.items() if any(not (s & recomputed) for s in stacks)}
        kept.update(k for name in recomputed for k in self.inputs[name])  # checkpoint keeps a segment's inputs
        peak = sum(self.size[k] for k in kept)
        if recomputed:
            by_order = sorted(kept, key=self.order.get)
            kept_before = [0]  # kept_before[i]: bytes of the i first kept tensors in forward order
            for k in by_order:
                kept_before.append(kept_before[-1] + self.size[k])
            orders = [self.order[k] for k in by_order]
        for name in recomputed:  # what is kept from before the segment, and all it saves again
            start = self.start[name]
            before = kept_before[bisect.bisect_left(orders, start)]
            again = sum(self.size[k] for k in self.inside[name] if not (k in kept and self.order[k] < start))
            peak = max(peak, before + again)
        return peak


def _meta_network(variant: Union[str, DANIEConfig], patch_size: Sequence[int], in_chans: int, num_classes: int,
                  dtype: torch.dtype) -> torch.nn.Module:
    with torch.device("meta"):
        return create_danie(variant, patch_size, in_chans, num_classes, deep_supervision=True).to(dtype)


def compiled_share(variant: Union[str, DANIEConfig], compiled: bool = True) -> float:
    """The share of the eager per-slice estimate that the compiled network keeps: COMPILED_SHARE for the
    configurations it was measured for (whatever their implementation options), 1 (the eager estimate) otherwise
    and for a network that is not `compiled`."""
    if not compiled:
        return 1.0
    cfg = get_config(variant)
    measured = [replace(get_config(v), name=cfg.name, head_upsample=cfg.head_upsample)
                for v in COMPILED_SHARE_MEASURED_FOR]
    return COMPILED_SHARE if cfg in measured else 1.0


def _estimate(params: int, one: _Profile, two: _Profile, recompute: Sequence[str], share: float = 1.0
              ) -> MemoryEstimate:
    # per slice: batch 2 less batch 1, so tensors saved once per step (the low-precision weight copies) are fixed
    a, b = one.saved_peak(recompute), two.saved_peak(recompute)
    return MemoryEstimate(params, (params * BYTES_PER_PARAM + 2 * a - b) / GIB, share * (b - a) / GIB)


def _profiles(variant, patch_size, in_chans, num_classes, dtype, segments=None, traffic=False):
    """(parameter count, segments, profiles at batch 1 and 2); segments None: the recomputation candidates."""
    net = _meta_network(variant, patch_size, in_chans, num_classes, dtype)
    segments = recompute_candidates(net) if segments is None else present_segments(net, segments)
    params = sum(p.numel() for p in net.parameters())
    return params, segments, [_Profile(net, b, in_chans, patch_size, dtype, segments, traffic) for b in (1, 2)]


def estimate_training_memory(variant: Union[str, DANIEConfig], patch_size: Sequence[int], in_chans: int = 1,
                             num_classes: int = 2, dtype: torch.dtype = torch.bfloat16,
                             recompute: Sequence[str] = (), compiled: bool = False) -> MemoryEstimate:
    """Fixed and per-slice peak training memory, with the `recompute` segments (module names, not nested) run
    again in the backward pass; names are resolved as `set_recompute` resolves them. `compiled`: the network
    trained through torch.compile (per slice, `compiled_share` of the eager estimate)."""
    params, present, (one, two) = _profiles(variant, patch_size, in_chans, num_classes, dtype, recompute)
    return _estimate(params, one, two, present, compiled_share(variant, compiled))


def plan_recompute(variant: Union[str, DANIEConfig], patch_size: Sequence[int], in_chans: int, num_classes: int,
                   batch_size: int, budget_gib: float, dtype: torch.dtype = torch.bfloat16,
                   compiled: bool = False) -> RecomputePlan:
    """The cheapest recomputed segments with which training at `batch_size` fits `budget_gib` (by the estimate).

    `compiled`: the network trains through torch.compile. If its compiled estimate fits, nothing is recomputed;
    otherwise the plan is the eager one. Checkpointed segments keep their inputs, compiled or not, and what the
    partitioner keeps around them was not measured, so the eager plan, an upper bound, is the safe one.

    Candidates are taken in order of bytes freed per slice (how much recomputing the segment alone lowers the
    peak) per byte of its forward traffic, until the estimate, the transients of recomputation included, fits;
    then each chosen segment the estimate no longer needs is dropped again, the costliest first.
    If even every candidate does not fit, the plan has them all and `fits` is False.
    """
    params, candidates, (one, two) = _profiles(variant, patch_size, in_chans, num_classes, dtype)
    estimate = _estimate(params, one, two, (), compiled_share(variant, compiled))
    if estimate.total_gib(batch_size) <= budget_gib:  # no need for the (slower) traffic count
        return RecomputePlan([], estimate, batch_size, budget_gib, 0.0, compiled)
    estimate = _estimate(params, one, two, ())
    _, _, (one, two) = _profiles(variant, patch_size, in_chans, num_classes, dtype, traffic=True)
    cost = {c: two.forward_traffic_by[c] - one.forward_traffic_by[c] for c in candidates}
    peak_one, peak_two = one.saved_peak(), two.saved_peak()
    frees = {c: peak_two - two.saved_peak([c]) - (peak_one - one.saved_peak([c])) for c in candidates}
    ranked = sorted((c for c in candidates if frees[c] > 0 and cost[c] > 0),
                    key=lambda c: (-frees[c] / cost[c], -frees[c]))
    chosen: List[str] = []
    for c in ranked:
        if estimate.total_gib(batch_size) <= budget_gib:
            break
        chosen.append(c)
        estimate = _estimate(params, one, two, chosen)
    if estimate.total_gib(batch_size) <= budget_gib:  # the greedy pass overshoots: drop what is no longer needed,
        for c in sorted(chosen, key=cost.get, reverse=True):  # the costliest first
            fewer = [s for s in chosen if s != c]
            smaller = _estimate(params, one, two, fewer)
            if smaller.total_gib(batch_size) <= budget_gib:
                chosen, estimate = fewer, smaller
    order = {c: i for i, c in enumerate(candidates)}
    chosen.sort(key=order.get)
    step_traffic = max(two.step_traffic - one.step_traffic, 1)
    return RecomputePlan(chosen, estimate, batch_size, budget_gib, sum(cost[c] for c in chosen) / step_traffic,
                         compiled)


def budget_note(plan: RecomputePlan) -> str:
    """One line for a log: what the plan recomputes, the estimate it reaches and what it is expected to cost."""
    total, n = plan.estimate.total_gib(plan.batch_size), len(plan.segments)
    if not n:
        return (f"batch {plan.batch_size} needs about {total:.1f} GiB{' compiled' if plan.compiled else ''}, within "
                f"{plan.budget_gib:.1f} GiB: no recomputation")
    upper_bound = " (estimated uncompiled; compiled, less)" if plan.compiled else ""
    what = (f"recomputing {n} segment{'s' if n > 1 else ''} ({', '.join(plan.segments[:3])}{', ...' if n > 3 else ''}) "
            f"in the backward pass: about {total:.1f} GiB{upper_bound} for batch {plan.batch_size}, same result, about "
            f"{100 * plan.extra_traffic:.0f} % more memory traffic")
    if plan.fits:
        return f"{what}, within {plan.budget_gib:.1f} GiB"
    return (f"{what}; that is still more than {plan.budget_gib:.1f} GiB: expect out-of-memory errors, lower the "
            f"batch size in the plans (danie-nnunet plan --gpu-memory)")


@dataclass
class CompiledShare:
    """Per-slice bytes that the network keeps for its backward pass, eager and compiled (one forward pass on the
    meta device each)."""
    eager: int
    compiled: int

    @property
    def share(self) -> float:
        return self.compiled / self.eager


def trace_compiled_share(variant: Union[str, DANIEConfig], patch_size: Sequence[int], in_chans: int = 1,
                         num_classes: int = 2, dtype: torch.dtype = torch.bfloat16) -> CompiledShare:
    """What torch.compile's default partitioner (min-cut rematerialisation over Inductor's decompositions, as
    Inductor partitions) keeps for the backward pass, against what eager autograd keeps, per slice.

    Traced on the meta device with a backend that runs the partitioned graphs as they are (no Inductor code
    generation): about a minute per batch size on a CPU, at any patch size. What the compiled backward receives
    besides the incoming gradients is what its forward kept. Inductor's later passes (its pattern rewrites,
    buffer reuse) are not modelled; on an H100 the compiled DANIE-L needed less than this predicts (512 x 512 x 12:
    18.0 GiB estimated with COMPILED_SHARE, 15.6 measured)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    def kept_by_compiled(net: torch.nn.Module, x: torch.Tensor) -> int:
        kept: List[int] = []

        def backward(gm: torch.fx.GraphModule, example_inputs):
            kept.append(sum(_nbytes(node.meta["val"]) for node in gm.graph.nodes
                            if node.op == "placeholder" and not node.name.startswith("tangents")
                            and isinstance(node.meta.get("val"), torch.Tensor)))
            return make_boxed_func(gm)

        backend = aot_autograd(fw_compiler=lambda gm, example_inputs: make_boxed_func(gm), bw_compiler=backward,
                               partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
        torch._dynamo.reset()
        try:
            outputs = torch.compile(net, backend=backend, dynamic=False)(x)
            sum(o.float().sum() for o in outputs).backward()  # the backward graph is compiled when it first runs
        finally:
            torch._dynamo.reset()
        if len(kept) != 1:
            raise RuntimeError(f"the compiled network had {len(kept)} backward graphs, expected 1 (a graph break?)")
        return kept[0]

    def kept_by_eager(net: torch.nn.Module, x: torch.Tensor) -> int:
        kept: Dict[int, torch.Tensor] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            kept[id(_base(t))] = _base(t)
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
        return sum(_nbytes(t) for t in kept.values())

    eager, compiled = [], []
    for batch in (1, 2):
        net = _meta_network(variant, patch_size, in_chans, num_classes, dtype)
        with torch.device("meta"):
            x = torch.empty(batch, in_chans, *patch_size, dtype=dtype)
        eager.append(kept_by_eager(net, x))
        compiled.append(kept_by_compiled(net, x))
    return CompiledShare(eager[1] - eager[0], compiled[1] - compiled[0])
