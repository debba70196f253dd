"""torch.compile of DANIE with eager autograd's autocast semantics in the backward pass (docs/performance.md).

AOTAutograd traces a compiled region's backward together with its forward, and by default under the forward's
autocast state (`torch._functorch.config.backward_pass_autocast = "same_as_forward"`, the default through torch
2.14; pytorch/pytorch#153044). Eager autograd runs each backward op in its forward op's dtypes instead. Under bf16
autocast the difference is DANIE's ES block: it runs in fp32 with autocast off (its C x C energy sums over all
H*W positions), and its compiled backward would run in bf16, 3.7e-3 from eager instead of 1e-7
(tests/test_compiled.py). The bf16 backward also fed the Inductor CPU miscompile that made compiled DANIE's
gradients NaN on CPU (bench/repro_inductor_nan.py). "off" traces the backward as eager autograd runs it.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .upcast_per_use import UpcastPerUse

OPTION = "backward_pass_autocast"
# DANIE's compile settings besides Inductor's default, each as torch.compile takes it. Inductor's own modes:
# reduce-overhead replays the compiled step as CUDA graphs, which spares a step bound by launching its kernels the
# launches (the compiled DANIE-S on an H100: device busy 64.1 of 115.4 ms); the max-autotune ones benchmark kernel
# choices at compile time. combo-kernels (Inductor's combo_kernels option, experimental there) launches up to 8
# independent generated kernels as one: under autocast each of DANIE-S's 367 convolution and linear weights and
# biases is cast to bf16 by a generated kernel of its own (the library call that reads it cannot take the cast in),
# and most of their gradients back to fp32 by another, some 650 to 730 launches of a step that do almost no work.
# Inductor's CPU code ignores the option. (Inductor's cpp_wrapper, which runs the compiled graphs from C++, is not
# offered: on this project's CPU the C++ of DANIE-S's compiled forward was still compiling after 17 minutes.)
COMPILE_SETTINGS = {
    "reduce-overhead": {"mode": "reduce-overhead"},
    "max-autotune": {"mode": "max-autotune"},
    "max-autotune-no-cudagraphs": {"mode": "max-autotune-no-cudagraphs"},
    "combo-kernels": {"options": {"combo_kernels": True}},
}


def replays_cuda_graphs(setting: str) -> bool:
    """Whether a compile setting replays the compiled graphs as CUDA graphs (Inductor's CUDA graph trees)."""
    from torch._inductor import list_mode_options  # Inductor's settings of each mode
    kwargs = COMPILE_SETTINGS.get(setting, {})
    options = {**(list_mode_options(kwargs["mode"]) if "mode" in kwargs else {}), **kwargs.get("options", {})}
    return bool(options.get("triton.cudagraphs", False))


def cuda_graph_skips() -> int:
    """How many compiled graphs this process has run without CUDA graphs where a setting asked for them (Inductor's
    counter; on CUDA its warning "skipping cudagraphs due to ..." says why, on a CPU there are none to replay)."""
    from torch._dynamo.utils import counters
    return counters["inductor"]["cudagraph_skips"]


def can_trace_backward_outside_autocast() -> bool:
    """Whether this torch has the option (torch >= 2.9)."""
    return hasattr(torch._functorch.config, OPTION)


def trace_backward_outside_autocast() -> bool:
    """Process-wide: compiled backwards traced from now on run outside autocast, as eager autograd's do.
    For a process that compiles DANIE (a DANIE trainer). False where this torch has no such option."""
    if not can_trace_backward_outside_autocast():
        return False
    setattr(torch._functorch.config, OPTION, "off")
    return True


def backward_outside_autocast():
    """The same for what is compiled (first called) inside this context only, e.g. DANIE next to a U-Net."""
    return torch._functorch.config.patch(**{OPTION: "off"}) if can_trace_backward_outside_autocast() else nullcontext()


def upcast_per_use() -> UpcastPerUse:
    """The one `UpcastPerUse` pass of this process (its `split` counts what it did)."""
    global _UPCAST_PER_USE
    if _UPCAST_PER_USE is None:
        from .upcast_per_use import UpcastPerUse
        _UPCAST_PER_USE = UpcastPerUse()
    return _UPCAST_PER_USE


_UPCAST_PER_USE = None


def store_values_before_upcasts() -> bool:
    """Process-wide: Inductor compiles from now on with `UpcastPerUse` as its post-grad pass (a bf16 value that
    several ops upcast is stored in bf16, not as its fp32 upcast: danie_nnunet/upcast_per_use.py). False, and
    nothing changed, where another post-grad pass is installed already."""
    import torch._inductor.config as inductor_config
    installed = inductor_config.post_grad_custom_post_pass
    if installed is not None and installed is not upcast_per_use():
        return False
    inductor_config.post_grad_custom_post_pass = upcast_per_use()
    return True


def values_stored_before_upcasts():
    """The same for what is compiled (first called) inside this context only."""
    import torch._inductor.config as inductor_config
    return inductor_config.patch(post_grad_custom_post_pass=upcast_per_use())


# Inductor stores (realises) a pointwise value that more than 4 later nodes read (`realize_reads_threshold`), or whose
# expression has more than 30 operations and several loads (`realize_opcount_threshold`, on a GPU), instead of
# recomputing it in each reader. In the backward of BatchNorm + GELU (and of MaxViT's SE gate) those rules store
# fp32 intermediates (BatchNorm's output, GELU's gradient) between kernels: by Inductor's own estimate one MBConv
# block's backward moves about twice what its reductions and gradient need. With 8 and 60 they are recomputed in
# the kernels that read them (the same fp32 arithmetic, so the same values): DANIE-S's compiled step at 512 x 512,
# batch 12, moves 51.1 GB instead of 67.0, DANIE-L's 71.6 instead of 93.2 (cl+wcopy+up; bench/gpu_launches.py).
# Set, the opcount threshold also replaces a CPU's own (50), but DANIETrainer compiles on CUDA only. Experimental
# (DANIE_larger_fusions) until a card times it: larger kernels recompute more per element, and may compile slower
# or spill registers.
LARGER_FUSIONS = {"realize_reads_threshold": 8, "realize_opcount_threshold": 60}


def fuse_larger_expressions() -> None:
    """Process-wide: Inductor compiles from now on with `LARGER_FUSIONS`."""
    import torch._inductor.config as inductor_config
    for option, value in LARGER_FUSIONS.items():
        setattr(inductor_config, option, value)


def larger_fusions():
    """The same for what is compiled (first called) inside this context only."""
    import torch._inductor.config as inductor_config
    return inductor_config.patch(LARGER_FUSIONS)


@contextmanager
def danie_compile_context(upcast_per_use_pass: bool = False, larger_fusion_thresholds: bool = False):
    """What DANIETrainer compiles DANIE under, for what is compiled inside this context only (the first forward and
    backward passes): the backward outside autocast; with `upcast_per_use_pass` (DANIE_upcast_per_use), the
    `UpcastPerUse` pass; with `larger_fusion_thresholds` (DANIE_larger_fusions), `LARGER_FUSIONS`."""
    with ExitStack() as stack:
        stack.enter_context(backward_outside_autocast())
        if upcast_per_use_pass:
            stack.enter_context(values_stored_before_upcasts())
        if larger_fusion_thresholds:
            stack.enter_context(larger_fusions())
        yield


def generated_kernels(fn: Callable[[], object]) -> int:
    """How many kernels Inductor generates while `fn()` runs (compiling whatever it first calls), with Inductor's
    caches off, so that a graph compiled before (in this process or another) is generated again and counted."""
    import torch._inductor.metrics as inductor_metrics
    inductor_metrics.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        fn()
    return inductor_metrics.generated_kernel_count
