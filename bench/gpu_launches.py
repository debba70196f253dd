"""How many kernels a compiled training step launches on a GPU, counted on a CPU: Inductor's Triton code generation
(the GPU's fusion and reduction-splitting decisions, with an H100's 132 multiprocessors) run on the CPU, each
generated kernel counted when the compiled step calls it, and not run.

The compiled DANIE step on an H100 is bound by the host launching its work (docs/performance.md): the number of
launches per step is its floor. Inductor's CPU code (C++) fuses and splits differently from its GPU code (one C++
function holds many loops, `bench/inductor_kernels.py`), so its count is not a GPU's. Here the CPU gets the GPU's
code generator instead: Inductor's `cpu_backend="triton"`, Triton's interpreter to load each kernel without a
GPU compiler, the device properties of an H100 for the heuristics that read them, and a launcher that counts
calls instead of running them. The library calls (convolutions, matrix products) run for real on the CPU, on
whatever the uncomputed kernels left in their inputs; attention is an opaque custom operator, one call each way as
CUDA's efficient attention (the CPU's SDPA would be decomposed into Inductor's own kernels). A step is counted
after a first one that compiles it, so what is counted is what every later step launches. Library calls are
counted apart, on an eager step (`danie_nnunet.dispatch_count`: the same calls compiled or not); the optimiser's
few multi-tensor launches (about 20) are in neither.

Each generated kernel also carries what Inductor estimates it reads and writes (its benchmark metadata, the bytes
its own bandwidth profiler divides by a kernel's time), so the table says how many GB the step's Triton kernels
move and how long that takes at the H100's bandwidth: the least device time the generated kernels can take, next
to the profile's measured time of the same kernels (`profile_compiled` prints them by family,
`danie_nnunet.profile_tables.generated_family_table`).

It depends on Inductor internals of the pinned torch (tests/test_bench.py runs it on a small network) and is a
proxy until a GPU profile gives the count of the same step (`bench/gpu_checks.sh profile_compiled` prints how many
kernels ran). Minutes per row on this project's CPU (Inductor's generation, and the library calls at full size):

    python bench/gpu_launches.py [--models S,L,U-Net] [--patch 512] [--batch 12] [--out FILE] [--sources DIR]
                                 [--variants cl,cl+wcopy] [--upcast-per-use]

`--sources DIR` also writes the Triton source of each row's kernels moving the most, to read what they load and
store (and in which dtype).
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os
import re
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from typing import List, Optional, Sequence
from unittest import mock

import torch
import torch.nn.functional as F

from danie_nnunet.bench import H100_BANDWIDTH_TB_S

# A launch moving under 4 MB (1.2 us at that bandwidth) takes what any kernel takes to start and drain the card,
# a few microseconds, not what its bytes take
SMALL_KERNEL_GB = 0.004
# the DANIE rows: bench variants (danie_nnunet.bench.VARIANTS), each channels-last, named in the table by their parts
CHANNELS_LAST_VARIANTS = ("cl", "cl+wcopy", "cl+up", "cl+wcopy+up", "cl+wcopy+up+fuse")
ROW_NAMES = {"wcopy": "weight copies", "up": "upcast per use", "fuse": "larger fusions"}
H100_PROPERTIES = dict(multi_processor_count=132, cc=90, major=9, regs_per_multiprocessor=65536,
                       max_threads_per_multi_processor=2048, max_threads_per_block=1024, warp_size=32)


def _attention_operator():
    """The opaque attention operator and its backward, defined once per process: one call each way, counted, not
    computed (the kernels around it are not computed either)."""
    if hasattr(torch.ops.danie_bench, "attention"):
        return torch.ops.danie_bench.attention

    def empty_like_inputs(*tensors):
        return [t.new_empty(t.shape) for t in tensors if t is not None]

    @torch.library.custom_op("danie_bench::attention", mutates_args=())
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return q.new_empty(q.shape)

    @torch.library.custom_op("danie_bench::attention_backward", mutates_args=())
    def attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: Optional[torch.Tensor]) -> List[torch.Tensor]:
        return empty_like_inputs(q, k, v, mask)

    attention.register_fake(lambda q, k, v, mask: q.new_empty(q.shape))
    attention_backward.register_fake(lambda grad, q, k, v, mask: empty_like_inputs(q, k, v, mask))

    def save(ctx, inputs, output):
        ctx.has_mask = inputs[3] is not None
        ctx.save_for_backward(*(t for t in inputs if t is not None))

    def backward(ctx, grad):
        q, k, v, *mask = ctx.saved_tensors
        grads = attention_backward(grad, q, k, v, mask[0] if ctx.has_mask else None)
        return grads[0], grads[1], grads[2], grads[3] if ctx.has_mask else None

    attention.register_autograd(backward, setup_context=save)
    return torch.ops.danie_bench.attention


def _sdpa_as_one_call(attention):
    """scaled_dot_product_attention as one call of `attention` each way; the operator is defined before any tracing
    (defined inside the traced code, its first call broke the graph)."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if dropout_p or is_causal:
            raise NotImplementedError("gpu_launches counts attention without dropout or a causal mask (DANIE's)")
        if attn_mask is not None:  # the efficient kernel takes a broadcast bias; its gradient is reduced outside it
            attn_mask = attn_mask.expand(*q.shape[:-1], k.shape[-2])
        return attention(q, k, v, attn_mask)

    return sdpa


class Launches(Counter):
    """Launches by kernel, keyed by (kernel name, id of its launcher); `gigabytes[kernel]`: what Inductor estimates
    one launch of it reads and writes (its `estimate_kernel_num_bytes`, the figure its own bandwidth profiler
    divides by a kernel's time); `sources[kernel]`: its Triton source."""

    def __init__(self):
        super().__init__()
        self.gigabytes, self.sources = {}, {}


def _judged_as_gpu_nodes(stack: ExitStack) -> None:
    """Inductor's IR and scheduler judge a node on the CPU by the CPU's rules whichever code generator they feed:
    they realise (store to memory) any reused result of tanh, exp or sigmoid and otherwise store larger
    expressions than on a GPU (the CPU's realise thresholds), and they skip the GPU's loop reordering, tiling
    analysis, loop merging and mix-order reductions. Left to them, the fused GELU of DANIE's MBConv blocks was
    stored in fp32 between its backward kernels (1.6 GB per step at DANIE-S's first stage), which a GPU recomputes.
    These patches make the nodes judged as a GPU's; what still follows the CPU is the scheduler's loop
    normalisation (it asks `is_gpu(device.type)`, which also picks the device's streams) and combo kernels."""
    import torch._inductor.ir as ir
    import torch._inductor.scheduler as scheduler

    def on_a_device(node) -> bool:
        return node.get_device() is not None

    stack.enter_context(mock.patch.object(ir, "is_cpu", lambda node: False))
    stack.enter_context(mock.patch.object(scheduler.BaseSchedulerNode, "is_cpu", lambda node: False))
    stack.enter_context(mock.patch.object(scheduler.BaseSchedulerNode, "is_gpu", on_a_device))
    stack.enter_context(mock.patch.object(scheduler, "_is_gpu_triton_backend",
                                          lambda a, b: on_a_device(a) and on_a_device(b)))


def _kernel_source(fn) -> str:
    """The Triton source of a kernel as the interpreter loaded it (a `JITFunction`'s `src`, else its Python)."""
    source = getattr(fn, "src", None)
    if source is None:
        try:
            source = inspect.getsource(getattr(fn, "fn", fn))
        except (OSError, TypeError):
            source = ""
    return source


@contextmanager
def gpu_code_on_cpu(properties: dict = H100_PROPERTIES, gpu_heuristics: bool = True):
    """While active, Inductor compiles for the CPU with its Triton (GPU) code generator and the given device
    properties, and the generated kernels are counted, not run: yields the `Launches`. `gpu_heuristics`: the IR
    and scheduler judge nodes as a GPU's (`_judged_as_gpu_nodes`; off, by the CPU's rules, as before
    2026-12-07's second session)."""
    import torch._inductor.config as inductor_config
    import torch._inductor.runtime.hints as hints
    import torch._inductor.runtime.triton_heuristics as heuristics
    import torch.utils._triton as torch_triton

    launches = Launches()
    real_create = hints.DeviceProperties.__dict__["create"]

    @functools.cache
    def create(device):
        if device.type != "cpu":
            return real_create.__func__(hints.DeviceProperties, device)
        return hints.DeviceProperties(type="cpu", index=None, **properties)

    def count(self, *args, **kwargs):  # keyed by kernel: the graphs of a step number their kernels alike
        kernel = (getattr(self.fn, "__name__", "triton_kernel"), id(self))
        launches[kernel] += 1
        if kernel not in launches.gigabytes:
            launches.gigabytes[kernel] = self.inductor_meta.get("kernel_num_gb") or 0.0
            launches.sources[kernel] = _kernel_source(self.fn)

    saved = (os.environ.get("TRITON_INTERPRET"), torch_triton.triton_hash_with_backend,
             heuristics.CachingAutotuner.run, F.scaled_dot_product_attention)
    torch._dynamo.reset()
    os.environ["TRITON_INTERPRET"] = "1"  # loads each kernel's source without a GPU compiler
    torch_triton.triton_hash_with_backend = lambda: "danie-bench-gpu-launches"  # asks the (absent) GPU driver
    hints.DeviceProperties.create = staticmethod(create)
    heuristics.CachingAutotuner.run = count
    F.scaled_dot_product_attention = _sdpa_as_one_call(_attention_operator())
    try:
        with ExitStack() as stack:
            stack.enter_context(inductor_config.patch(cpu_backend="triton", force_disable_caches=True,
                                                      benchmark_kernel=True))  # (each kernel's bytes in its metadata)
            if gpu_heuristics:
                _judged_as_gpu_nodes(stack)
            yield launches
    finally:
        interpret, torch_triton.triton_hash_with_backend, heuristics.CachingAutotuner.run, \
            F.scaled_dot_product_attention = saved
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = interpret
        hints.DeviceProperties.create = real_create
        torch._dynamo.reset()


def count_compiled_step(model: str, patch: int, batch: int, variant: str = "cl", gpu_heuristics: bool = True) -> dict:
    """Triton launches of one compiled training step (forward, the trainer's loss, backward) of DANIE-`model` in a
    channels-last bench variant, bf16 autocast (`cl`; `cl+wcopy`: DANIE_cast_weights_once; `cl+up`:
    DANIE_upcast_per_use; `cl+wcopy+up`: both; `cl+wcopy+up+fuse`: and DANIE_larger_fusions) or of nnU-Net's U-Net
    (its fp16 autocast as bf16), after a first step that compiled it; and the library calls of an eager step."""
    from danie_nnunet.bench import danie_training_step, eager_step_counts, unet_training_step
    from danie_nnunet.dispatch_count import LIBRARY_KINDS
    from danie_nnunet.profile_tables import kernel_family

    cpu = torch.device("cpu")
    torch.set_flush_denormal(True)  # the uncomputed kernels leave anything in the library calls' inputs
    try:
        with gpu_code_on_cpu(gpu_heuristics=gpu_heuristics) as launches:
            if model == "U-Net":
                step, x = unet_training_step(patch, batch, 1, 9, cpu, compiled=True)
                # the CPU's bf16 autocast standing in for its fp16 (the same casts and kernels; a CPU's fp16
                # convolutions are slow)
                step.amp, step.amp_dtype = True, torch.bfloat16
            else:  # the CPU's bf16 autocast standing in for the card's
                step, x = danie_training_step(model, variant, True, patch, batch, 1, 9, cpu,
                                              torch.bfloat16, dtype=torch.float32, autocast_off_cuda=True)
            started = time.perf_counter()
            step.forward_backward(x)
            compile_s = time.perf_counter() - started
            launches.clear()
            step.forward_backward(x)
            counted = Counter(launches)
    finally:
        torch.set_flush_denormal(False)
    parts = eager_step_counts(model, "cl", patch, batch, 1, 9, torch.device("meta"))
    families, family_gb, kernel_gb, sources = Counter(), Counter(), Counter(), {}
    for kernel, n in counted.items():
        family, gigabytes = kernel_family(kernel[0]), n * launches.gigabytes[kernel]
        families[family] += n
        family_gb[family] += gigabytes
        kernel_gb[kernel[0]] += gigabytes
        sources[kernel[0]] = launches.sources[kernel]
    small = sum(n for kernel, n in counted.items() if launches.gigabytes[kernel] < SMALL_KERNEL_GB)
    return {"launches": sum(counted.values()), "kernels": len(counted), "compile_s": compile_s, "families": families,
            "library": sum(part[k] for part in parts.values() for k in LIBRARY_KINDS),
            "gigabytes": sum(family_gb.values()), "family_gb": family_gb, "kernel_gb": kernel_gb, "small": small,
            "sources": sources}


def write_sources(folder: str, label: str, kernel_gb: Counter, sources: dict, n: int) -> List[str]:
    """Writes the sources of the `n` kernels moving the most to folder/<label>/<rank>_<kernel>.py, headed by
    their GB per step; returns the paths."""
    where = os.path.join(folder, re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_"))
    os.makedirs(where, exist_ok=True)
    paths = []
    for rank, (kernel, gigabytes) in enumerate(kernel_gb.most_common(n), 1):
        paths.append(os.path.join(where, f"{rank:02d}_{kernel}.py"))
        with open(paths[-1], "w") as f:
            f.write(f"# {label}: {gigabytes * 1e3:.0f} MB per step (Inductor's estimate, all launches)\n"
                    + sources.get(kernel, ""))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> str:
    from danie_nnunet.markdown import table_lines

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="S,L,U-Net")
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--families", type=int, default=12, help="kernel families listed per row (most launched)")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--cpu-rules", action="store_true",
                        help="let Inductor's IR and scheduler judge the nodes by the CPU's rules (the count before "
                             "2026-12-07's second session) instead of a GPU's")
    parser.add_argument("--variants", default="cl,cl+wcopy",
                        help="DANIE rows, bench variants with channels-last: cl, cl+wcopy (weight copies), cl+up "
                             "(upcast per use), cl+wcopy+up, cl+wcopy+up+fuse (and larger fusions)")
    parser.add_argument("--upcast-per-use", action="store_true",
                        help="also a row per DANIE with bf16 values stored before their upcasts (DANIE_upcast_per_use): "
                             "--variants plus cl+up")
    parser.add_argument("--sources", default=None,
                        help="also write the Triton source of each row's kernels moving the most (as many as "
                             "--families) under this folder")
    args = parser.parse_args(argv)
    variants = args.variants.split(",") + (["cl+up"] if args.upcast_per_use else [])
    unknown = [v for v in variants if v not in CHANNELS_LAST_VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose from {', '.join(CHANNELS_LAST_VARIANTS)}")
    variants = list(dict.fromkeys(variants))  # each row once, in the order asked
    rows, details, traffic, largest = [], [], [], []
    for model in args.models.split(","):
        for variant in (variants if model != "U-Net" else ["cl"]):
            c = count_compiled_step(model, args.patch, args.batch, variant, not args.cpu_rules)
            label = "nnU-Net 2D U-Net (fp16 as bf16)" if model == "U-Net" else \
                f"DANIE-{model}, bf16" + "".join(f", {ROW_NAMES[part]}" for part in variant.split("+")[1:])
            rows.append([label, str(c["launches"]), str(c["kernels"]), str(c["library"]),
                         str(c["launches"] + c["library"]), f"{c['gigabytes']:.1f}",
                         f"{c['gigabytes'] / H100_BANDWIDTH_TB_S:.1f}", str(c["small"]), f"{c['compile_s']:.0f}"])
            details.append(f"{label}: " + ", ".join(f"{n} {f}" for f, n in c["families"].most_common(args.families)))
            traffic.append(f"{label}: " + ", ".join(f"{gb:.1f} {f} ({c['families'][f]})"
                                                    for f, gb in c["family_gb"].most_common(args.families)))
            largest.append(f"{label}: " + ", ".join(f"{gb * 1e3:.0f} MB {k}"
                                                    for k, gb in c["kernel_gb"].most_common(5)))
            if args.sources:
                write_sources(args.sources, label, c["kernel_gb"], c["sources"], args.families)
    report = "\n".join([
        f"torch {torch.__version__}; Inductor's Triton code for an H100 ({H100_PROPERTIES['multi_processor_count']} "
        f"SMs), generated and counted on the CPU; one compiled training step (forward, loss, backward; no "
        f"optimiser) at {args.batch}x1x{args.patch}x{args.patch}, 9 classes, DANIE channels-last; nodes judged by "
        f"{'the CPU' if args.cpu_rules else 'a GPU'}'s fusion rules", "",
        *table_lines(["model", "Triton launches", "distinct kernels", "library calls (eager count)",
                      "launches in all", "Triton GB moved (Inductor's estimate)",
                      f"its ms at {H100_BANDWIDTH_TB_S} TB/s", "Triton launches under 4 MB", "compile s"], rows),
        "", "Most launched kernel families:", "", *(f"- {d}" for d in details),
        "", "Kernel families moving the most (GB per step, launches):", "", *(f"- {d}" for d in traffic),
        "", "Kernels moving the most (per step, all their launches):", "", *(f"- {d}" for d in largest)])
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return report


if __name__ == "__main__":
    main()
