"""`danie-nnunet bench`: DANIE-S, DANIE-L and nnU-Net's default 2D U-Net on one device, one process.

For each model and (patch, batch): a full training step with the trainer's loss and optimiser (DANIE: 0.7 Dice
+ 0.3 CE on the four heads, AdamW; U-Net: nnU-Net's Dice + CE with its deep-supervision weights, SGD 0.99
nesterov), gradient clipping at 12 as nnU-Net does; then inference throughput as nnU-Net's predictor runs it
(eval, no grad, deep supervision off, fp16 autocast on CUDA), at the row's batch and on single tiles (batch 1,
inference mode: what nnU-Net's predictor runs, one call per tile and mirrored copy), DANIE also with CUDA graphs
(`cuda_graphs.py`, checked against its eager output). Prints a Markdown table.

Achieved TFLOP/s counts 3x the forward FLOPs per training step (forward + backward) and 1x for inference;
forward FLOPs come from torch's FlopCounterMode (the heads' upsampling counted as in `cost.py`). This tool
imports nnunetv2 and dynamic-network-architectures (for the U-Net and the losses); the network code does not.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Sequence

import torch

from .compiled import COMPILE_SETTINGS, cuda_graph_skips, danie_compile_context, replays_cuda_graphs
from .dispatch_count import LIBRARY_KINDS, count_dispatch, count_training_step
from .markdown import table_lines
from .profile_tables import device_activity, family_table, generated_family_table, host_family_table, \
    library_shape_table
from .weight_cast import LowPrecisionWeights

# dense bf16 tensor-core peaks (TFLOP/s) by device name, for the "share of peak" column
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "4090": 165.0}
H100_BANDWIDTH_TB_S = 3.35  # HBM3 of the H100 SXM: what the generated kernels' bytes take at best


VARIANTS = {  # DANIE fast formulations, each the same function as "plain" (checked per row against it)
    "plain": dict(channels_last=False, recompute=False),
    "cl": dict(channels_last=True, recompute=False),  # channels-last memory format
    "rc": dict(channels_last=False, recompute=True),  # activation recomputation (recompute.py)
    "cl+rc": dict(channels_last=True, recompute=True),
    # as few recomputed segments as fit the row's batch into 12 GiB by memory.py's estimate (DANIE_memory_gib=12)
    "cl+fit12": dict(channels_last=True, recompute=12.0),
    "cl+fn": dict(channels_last=True, recompute=False, fast_norm=True),  # MaxViT's LayerNorms in bf16
    # autocast's weight casts as one copy per step (weight_cast.py, DANIE_cast_weights_once); needs autocast (CUDA):
    # elsewhere the row runs as cl and says so
    "cl+wcopy": dict(channels_last=True, recompute=False, weight_copies=True),
    # compiled, a bf16 value that several ops upcast is stored in bf16, not as its fp32 upcast (upcast_per_use.py,
    # DANIE_upcast_per_use); an eager row runs as cl
    "cl+up": dict(channels_last=True, recompute=False, upcast_per_use=True),
    # both at once, as DANIETrainer does with both flags set
    "cl+wcopy+up": dict(channels_last=True, recompute=False, weight_copies=True, upcast_per_use=True),
    # and compiled with Inductor's realise thresholds raised (compiled.LARGER_FUSIONS, DANIE_larger_fusions; GPU only)
    "cl+wcopy+up+fuse": dict(channels_last=True, recompute=False, weight_copies=True, upcast_per_use=True,
                             larger_fusions=True),
}
# A fast DANIE passes its check when its relative L2 error against the plain network in fp32 is at most
# CHECK_FACTOR x that of the plain network in bf16 (the noise floor of the precision itself) + CHECK_FLOOR.
# On CPU both run in float64 (CPU_DTYPE), which checks the function itself: a tiny random-init DANIE amplifies
# fp32 rounding to 1e-3, and CPU kernels round differently per memory format (channels-last BatchNorm in fp32 is
# 20x further from float64 than the NCHW one), so only float64 separates a wrong function from rounding.
CHECK_FACTOR = 2.0
CHECK_FLOOR = 1e-3
CPU_DTYPE = torch.float64
CPU_CHECK_FLOOR = 1e-6
# CUDA graphs replay the eager forward's kernels: their fp16 output must match the eager one to rounding
GRAPHS_TOLERANCE = 1e-3


@dataclass
class BenchRow:
    model: str
    mode: str
    patch: int
    batch: int
    train_ms: float
    train_slices_s: float
    train_tflops: float
    peak_gib: float
    infer_slices_s: float
    infer_tflops: float
    tile_ops: int
    tiles_s: float
    tiles_s_graphs: float  # -1 here and above: not measured (e.g. graphs: the U-Net, CPU)
    check: str = "reference"

    def cells(self, peak: Optional[float]) -> List[str]:
        share = f"{100 * self.train_tflops / peak:.1f}%" if peak else "n/a"
        optional = [(self.peak_gib, f"{self.peak_gib:.2f}"), (self.infer_slices_s, _rate(self.infer_slices_s)),
                    (self.infer_tflops, f"{self.infer_tflops:.3g}"), (self.tile_ops, str(self.tile_ops)),
                    (self.tiles_s, _rate(self.tiles_s)), (self.tiles_s_graphs, _rate(self.tiles_s_graphs))]
        return [self.model, self.mode, f"{self.patch}x{self.patch}", str(self.batch), f"{self.train_ms:.1f}",
                _rate(self.train_slices_s), f"{self.train_tflops:.3g}", share] + \
            [text if value >= 0 else "n/a" for value, text in optional] + [self.check]


def _rate(per_second: float) -> str:
    # one decimal, as the GPU tables have it; slower rates (a busy CPU: a slice every 20 s) keep 3 digits, not 0.0
    return f"{per_second:.1f}" if per_second >= 1 else f"{per_second:.3g}"


HEADER = ["model", "mode", "patch", "batch", "train step ms", "train slices/s", "train TFLOP/s", "share of peak",
          "peak GiB", "inference slices/s", "inference TFLOP/s", "operators per tile forward",
          "predictor tiles/s (batch 1)", "predictor tiles/s, CUDA graphs",
          "check: rel. L2 error vs plain fp32 (CPU: all float64), outputs / grads (plain in the same precision)"]


def nnunet_unet(patch: int, in_chans: int, num_classes: int) -> torch.nn.Module:
    """nnU-Net's default 2D PlainConvUNet as its planner builds it for a square patch (features 32..512,
    pooling while the feature map stays >= 4, InstanceNorm, LeakyReLU, deep supervision)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    n_stages = 1
    while patch // 2 ** n_stages >= 4 and n_stages < 8:
        n_stages += 1
    return PlainConvUNet(in_chans, n_stages, [min(32 * 2 ** i, 512) for i in range(n_stages)], torch.nn.Conv2d,
                         3, [1] + [2] * (n_stages - 1), 2, num_classes, 2, conv_bias=True,
                         norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def _losses(kind: str, n_outputs: int, compiled: bool):
    """The trainer's loss (nnU-Net compiles its Dice part when it compiles the network) and the target scales."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    danie = kind == "danie"
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=0.3 if danie else 1, weight_dice=0.7 if danie else 1,
                          dice_class=MemoryEfficientSoftDiceLoss)
    if compiled:
        loss.dc = torch.compile(loss.dc)
    if danie:
        return DeepSupervisionWrapper(loss, [0.0] + [1.0] * (n_outputs - 1)), [1.0] * n_outputs
    weights = [1 / 2 ** i for i in range(n_outputs)]
    weights[-1] = 0
    weights = [w / sum(weights) for w in weights]
    return DeepSupervisionWrapper(loss, weights), [1 / 2 ** i for i in range(n_outputs)]


def _forward_flops(build_on_meta: Callable[[], torch.nn.Module], in_chans: int, patch: int) -> float:
    """Forward FLOPs of one slice, counted on the meta device (no memory, no compute)."""
    from .cost import count_on_meta
    return float(count_on_meta(build_on_meta, (1, in_chans, patch, patch))[1].get_total_flops())


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _graphed_tiles(net: torch.nn.Module, tile_step: Callable[[], torch.Tensor], device: torch.device, warmup: int,
                   iters: int):
    """Single-tile inference with CUDA graphs: (seconds per tile, check text against the eager output)."""
    eager = tile_step()
    net.set_cuda_graphs()
    try:
        error = _rel_l2(tile_step(), eager)
        if net.cuda_graphs.failed:
            return -1.0, "; graphs: capture failed (eager)"
        seconds = _timed(tile_step, device, warmup, iters)
    finally:
        net.set_cuda_graphs(False)
    return seconds, f"; graphs {'PASS' if error <= GRAPHS_TOLERANCE else 'FAIL'} {error:.1e}"


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


class TrainStep:
    """One training step as the trainer runs it: autocast forward, loss, backward (GradScaler in fp16), clipping
    at 12, optimiser step (DANIE: AdamW 1e-4/1e-4, fused; U-Net: SGD 0.99 nesterov as nnU-Net)."""

    def __init__(self, net: torch.nn.Module, model: torch.nn.Module, kind: str, loss_fn, targets, device,
                 amp_dtype: Optional[torch.dtype], autocast_off_cuda: bool = False):
        self.net, self.model, self.loss_fn, self.targets = net, model, loss_fn, targets
        self.device_type = device.type
        # None: fp32; off CUDA no autocast, unless asked (a CPU's autocast standing in for a card's, in counts)
        self.amp = (device.type == "cuda" or autocast_off_cuda) and amp_dtype is not None
        self.amp_dtype = amp_dtype or torch.float32
        fused = {"fused": True} if device.type in ("cuda", "cpu") else {}  # as DANIETrainer
        if kind == "danie":
            self.opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4, **fused)
        else:
            self.opt = torch.optim.SGD(net.parameters(), lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and amp_dtype == torch.float16 else None
        # the torch.compile settings a compiled model is first traced and compiled under (its backward graph is
        # compiled at the first backward pass)
        self.trace_context = nullcontext
        self.weights = None  # LowPrecisionWeights: autocast's weight casts as one copy (variant cl+wcopy)

    def forward_backward(self, x: torch.Tensor) -> list:
        self.opt.zero_grad(set_to_none=True)
        with self.trace_context():
            with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.model(x) if self.weights is None else self.weights(self.model, x)
                loss = self.loss_fn(out, self.targets)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.weights is not None:
            self.weights.gradients_to_parameters()
        return out

    def __call__(self, x: torch.Tensor) -> None:
        self.forward_backward(x)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()


def _outputs_and_grads(step: TrainStep, x: torch.Tensor):
    out = step.forward_backward(x)
    # in the step's own dtype; _rel_l2 compares in float64
    grads = torch.cat([p.grad.flatten() for p in step.net.parameters()])
    return torch.stack([o.detach() for o in out]), grads


def build_danie(model: str, patch: int, in_chans: int, num_classes: int, variant: str = "plain",
                head_upsample: str = "matmul", batch: int = 1, compiled: bool = False) -> torch.nn.Module:
    """DANIE-S/L with deep supervision in a bench variant ('plain' = contiguous NCHW, no recomputation); a
    variant with a memory budget recomputes what training at `batch` needs to fit it, planned as DANIETrainer
    plans it for the network compiled or not."""
    from .memory import plan_recompute
    from .network import create_danie
    net = create_danie(model, (patch, patch), in_chans, num_classes, deep_supervision=True,
                       head_upsample=head_upsample)
    opts = VARIANTS[variant]
    if opts["channels_last"]:
        net.set_channels_last()
    if opts.get("fast_norm"):
        net.set_fast_norm()
    if opts["recompute"] is True:
        net.set_grad_checkpointing()
    elif opts["recompute"]:
        plan = plan_recompute(model, (patch, patch), in_chans, num_classes, batch, opts["recompute"],
                              compiled=compiled)
        net.set_grad_checkpointing(segments=plan.segments)
    return net


@dataclass
class CheckResult:
    """Relative L2 errors (outputs, gradients) against the plain network (fp32 on CUDA, float64 on CPU), of the
    fast network and of the plain one in the fast one's precision (bf16 on CUDA; float64 on CPU: zero)."""
    fast: tuple
    plain: tuple
    floor: float = CHECK_FLOOR

    @property
    def passed(self) -> bool:
        return all(f <= CHECK_FACTOR * p + self.floor for f, p in zip(self.fast, self.plain))

    def __str__(self) -> str:
        return (f"{'PASS' if self.passed else 'FAIL'} {self.fast[0]:.1e} / {self.fast[1]:.1e} "
                f"({self.plain[0]:.1e} / {self.plain[1]:.1e})")


def danie_training_step(model: str, variant: str, compiled: bool, patch: int, batch: int, in_chans: int,
                        num_classes: int, device: torch.device, amp_dtype: torch.dtype,
                        compile_backend: str = "inductor", dtype: Optional[torch.dtype] = None,
                        autocast_off_cuda: bool = False):
    """A DANIE in a bench variant (matmul heads, compiled or not) with DANIETrainer's step, an input and targets;
    in fp32 (CUDA) or CPU_DTYPE (elsewhere) unless `dtype` is given; `autocast_off_cuda`: the step autocasts to
    `amp_dtype` on any device (and a weight-copies variant records its copies there)."""
    torch.manual_seed(0)
    dtype = dtype or (torch.float32 if device.type == "cuda" else CPU_DTYPE)
    net = build_danie(model, patch, in_chans, num_classes, variant, batch=batch, compiled=compiled)
    net.to(device=device, dtype=dtype)
    net.train()
    x = torch.randn(batch, in_chans, patch, patch, device=device, dtype=dtype)
    target = torch.randint(0, num_classes, (batch, 1, patch, patch), device=device).float()
    loss_fn, scales = _losses("danie", 5, compiled)
    model_fn = _compile(net, compile_backend) if compiled else net
    step = TrainStep(net, model_fn, "danie", loss_fn, [target] * len(scales), device, amp_dtype, autocast_off_cuda)
    if compiled:  # as DANIETrainer compiles it: the backward outside autocast (danie_nnunet/compiled.py)
        step.trace_context = partial(danie_compile_context, VARIANTS[variant].get("upcast_per_use", False),
                                     VARIANTS[variant].get("larger_fusions", False))
    if VARIANTS[variant].get("weight_copies") and step.amp:  # as DANIETrainer records them, from the step's input
        step.weights = LowPrecisionWeights.record(net, lambda: net(x), device.type, step.amp_dtype)
    return step, x


def unet_training_step(patch: int, batch: int, in_chans: int, num_classes: int, device: torch.device,
                       compiled: bool = False, compile_backend: str = "inductor"):
    """nnU-Net's default 2D U-Net with nnUNetTrainer's step (fp16, GradScaler), an input and its deep-supervision
    targets."""
    net = nnunet_unet(patch, in_chans, num_classes).to(device)
    x = torch.randn(batch, in_chans, patch, patch, device=device)
    with torch.no_grad():
        n_outputs = len(net(x[:1]))
    loss_fn, scales = _losses("unet", n_outputs, compiled)
    target = torch.randint(0, num_classes, (batch, 1, patch, patch), device=device).float()
    targets = [target if s == 1 else torch.nn.functional.interpolate(target, scale_factor=s, mode="nearest-exact")
               for s in scales]
    step = TrainStep(net, _compile(net, compile_backend) if compiled else net, "unet", loss_fn, targets, device,
                     torch.float16)
    return step, x


def compare_with_plain(model: str, variant: str, compiled: bool, patch: int, batch: int, in_chans: int,
                       num_classes: int, device: torch.device, amp_dtype: torch.dtype = torch.bfloat16,
                       compile_backend: str = "inductor"):
    """One training forward/backward of a fast DANIE (variant, matmul heads, compiled or not) against the plain
    eager one with F.interpolate heads in fp32: same weights, input and loss. The plain one also runs in the fast
    one's precision (bf16), which gives the error that precision itself makes. On CPU everything runs in float64
    (CPU_DTYPE). Returns the CheckResult and the fast one's training step and input, ready for timing."""
    step, x = danie_training_step(model, variant, compiled, patch, batch, in_chans, num_classes, device, amp_dtype,
                                  compile_backend)
    plain = build_danie(model, patch, in_chans, num_classes, "plain", head_upsample="interpolate")
    plain.to(device=device, dtype=x.dtype).load_state_dict(step.net.state_dict())
    plain.train()
    ref = _outputs_and_grads(TrainStep(plain, plain, "danie", step.loss_fn, step.targets, device, None), x)
    plain_low = _outputs_and_grads(TrainStep(plain, plain, "danie", step.loss_fn, step.targets, device, amp_dtype), x) \
        if device.type == "cuda" else ref
    del plain
    out = _outputs_and_grads(step, x)
    result = CheckResult(tuple(_rel_l2(a, b) for a, b in zip(out, ref)),
                         tuple(_rel_l2(a, b) for a, b in zip(plain_low, ref)),
                         CHECK_FLOOR if device.type == "cuda" else CPU_CHECK_FLOOR)
    return result, step, x


def bench_row(model: str, variant: str, patch: int, batch: int, in_chans: int, num_classes: int,
              device: torch.device, compiled: bool, warmup: int, iters: int, amp_dtype: torch.dtype,
              compile_backend: str = "inductor", inference: bool = True) -> BenchRow:
    """Check (DANIE rows) and time one row: a training step, then (unless `inference` is off) eager inference as
    nnU-Net's predictor runs it (eval, no grad, deep supervision off, fp16 autocast on CUDA)."""
    amp = device.type == "cuda"
    skips_before = cuda_graph_skips()
    if model == "U-Net":  # nnU-Net's trainer: fp16 with GradScaler
        label, train_dtype, check = "nnU-Net 2D PlainConvUNet", torch.float16, "reference"
        flops_build = partial(nnunet_unet, patch, in_chans, num_classes)
        step, x = unet_training_step(patch, batch, in_chans, num_classes, device, compiled, compile_backend)
        net = step.net
    else:  # DANIETrainer: bf16 without GradScaler
        label, train_dtype = f"DANIE-{model}", amp_dtype
        flops_build = partial(build_danie, model, patch, in_chans, num_classes, head_upsample="interpolate")
        result, step, x = compare_with_plain(model, variant, compiled, patch, batch, in_chans, num_classes, device,
                                             train_dtype, compile_backend)
        net, check = step.net, str(result)
    fwd_flops = _forward_flops(flops_build, in_chans, patch) * batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    train_s = _timed(partial(step, x), device, warmup, iters)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else -1.0
    infer = _inference(net, model, x, device, warmup, iters) if inference else Inference()
    check += infer.graphs_check
    precision = str(train_dtype) if amp else str(next(net.parameters()).dtype)
    mode = f"{_mode_label(compiled, compile_backend)}, {precision.split('.')[-1]}"
    if model != "U-Net" and variant != "plain":
        mode += f", {variant}"
        if VARIANTS[variant].get("weight_copies"):
            mode += f" ({len(step.weights)} copied)" if step.weights is not None else " (no autocast here: as cl)"
    if compiled:
        mode += _cuda_graphs_note(compile_backend, skips_before)
    return BenchRow(label, mode, patch, batch, 1e3 * train_s, batch / train_s, 3 * fwd_flops / train_s / 1e12,
                    peak, _per_second(batch, infer.batch_s), _per_second(fwd_flops / 1e12, infer.batch_s),
                    infer.tile_ops, _per_second(1, infer.tile_s), _per_second(1, infer.graphs_s), check)


def _per_second(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else -1.0  # -1: not measured


@dataclass
class Inference:
    """Seconds per batch and per single tile (-1: not measured) of a row's network as nnU-Net's predictor runs it."""
    batch_s: float = -1.0
    tile_ops: int = -1
    tile_s: float = -1.0
    graphs_s: float = -1.0  # DANIE's CUDA graphs of single tiles (cuda_graphs.py); not the U-Net's, not on a CPU
    graphs_check: str = ""


def _inference(net: torch.nn.Module, model: str, x: torch.Tensor, device: torch.device, warmup: int,
               iters: int) -> Inference:
    """Eval, no grad, deep supervision off, fp16 autocast on CUDA: the row's batch, then single tiles (inference
    mode, one call per tile), DANIE also replaying CUDA graphs of them."""
    amp = device.type == "cuda"
    net.eval()
    if hasattr(net, "deep_supervision"):
        net.deep_supervision = False
    else:
        net.decoder.deep_supervision = False

    def infer_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            net(x)

    result = Inference(batch_s=_timed(infer_step, device, warmup, iters))
    tile = x[:1].contiguous()

    def tile_step():  # as nnU-Net's predictor: inference mode, one tile per call
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            return net(tile)

    result.tile_s = _timed(tile_step, device, warmup, iters)
    result.tile_ops = count_dispatch(tile_step)["operators"]
    if model != "U-Net" and device.type == "cuda":
        result.graphs_s, result.graphs_check = _graphed_tiles(net, tile_step, device, warmup, iters)
    return result


def _compile(net: torch.nn.Module, compile_backend: str) -> torch.nn.Module:
    """torch.compile with a backend (inductor, aot_eager, eager) or Inductor in one of COMPILE_SETTINGS."""
    if compile_backend in COMPILE_SETTINGS:
        return torch.compile(net, **COMPILE_SETTINGS[compile_backend])
    return torch.compile(net, backend=compile_backend)


def _cuda_graphs_note(compile_backend: str, skips_before: int) -> str:
    """For a setting that replays CUDA graphs, whether the row's compiled graphs did (Inductor skips them for some
    graphs, e.g. on a CPU, and the row would time another step than it names)."""
    if not replays_cuda_graphs(compile_backend):
        return ""
    skipped = cuda_graph_skips() - skips_before
    return f", CUDA graphs skipped for {skipped} graph(s)" if skipped else ", CUDA graphs replayed"


def _mode_label(compiled: bool, compile_backend: str) -> str:
    if not compiled:
        return "eager"
    return "compile" if compile_backend == "inductor" else f"compile ({compile_backend})"


def profile_row(model: str, variant: str, patch: int, batch: int, in_chans: int, num_classes: int,
                device: torch.device, amp_dtype: torch.dtype, compiled: bool = False,
                compile_backend: str = "inductor", warmup: int = 3, iters: int = 3, row_limit: int = 50) -> str:
    """The kernels of one training step (eager or compiled), most device time first (torch.profiler), after a
    line that says how much of the step's wall time the device was busy (a step that launches faster than the
    device computes keeps it busy all the time; one bound by launches or host work does not), on CUDA the device
    time by kernel family (`family_table`), the host time by family (`host_family_table`): launching,
    library operators, Python wrappers, or waiting for the device, and the library operators by input shape
    (`library_shape_table`, from one more step)."""
    from torch.profiler import ProfilerActivity, profile
    if model == "U-Net":
        raise ValueError("--profile takes a DANIE model (S or L)")
    # fp32 on a CPU too: in float64 (CPU_DTYPE, for the checks) MaxViT's depthwise convolutions run channel by
    # channel, half a million operator calls per step, which took the profiler a minute to read
    step, x = danie_training_step(model, variant, compiled, patch, batch, in_chans, num_classes, device, amp_dtype,
                                  compile_backend, dtype=torch.float32)
    # compiled, the first step compiles; unprofiled, since the profiler itself slows the host side
    wall_s = _timed(partial(step, x), device, max(warmup, 1), max(iters, 1))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    mode = _mode_label(compiled, compile_backend)
    head = f"DANIE-{model} {variant}, {batch}x{in_chans}x{patch}x{patch}, one {mode} training step: " \
           f"{1e3 * wall_s:.1f} ms wall (median of {max(iters, 1)}, unprofiled)"
    if device.type == "cuda":
        busy_us, launches = device_activity(events)
        head += f", device busy {busy_us / 1e3:.1f} ms of it ({busy_us / (1e4 * wall_s):.0f} %) in {launches} " \
                f"kernels and copies"
        head += "\n\n" + family_table(events)
        if compiled:
            head += "\n\n" + generated_family_table(events)
    # the profiler slows the host (the H100's compiled DANIE-S: 206.8 ms of host time in a 115.4 ms step), so
    # the host table's shares are what compare with the unprofiled wall time, not its milliseconds
    head += "\n\n" + host_family_table(events)
    # one more step with the operators' input shapes recorded (apart, as recording them slows the host further):
    # which convolutions and matrix products the library time goes to
    with profile(activities=activities, record_shapes=True) as shaped:
        step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    head += "\n\n" + library_shape_table(shaped.key_averages(group_by_input_shape=True)) + "\n"
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return head + "\n" + events.table(sort_by=sort, row_limit=row_limit, max_name_column_width=60)


LAUNCH_HEADER = ["model", "operators: forward", "loss", "backward", "step", "convolutions", "matrix products",
                 "attention", "library calls", "library calls vs U-Net"]


def eager_step_counts(model: str, variant: str, patch: int, batch: int, in_chans: int, num_classes: int,
                      device: torch.device) -> dict:
    """What one eager training step of `model` (DANIE's S, L..., or "U-Net") dispatches, by part (forward, the
    trainer's loss, backward; dispatch_count.count_training_step); on the meta device instantly."""
    if model == "U-Net":
        step, x = unet_training_step(patch, batch, in_chans, num_classes, device)
    else:
        step, x = danie_training_step(model, variant, False, patch, batch, in_chans, num_classes, device, None)
    return count_training_step(step.net, step.loss_fn, x, step.targets)


def launch_table(models: Sequence[str], variant: str, patch: int, batch: int, in_chans: int, num_classes: int,
                 device: torch.device) -> str:
    """What one eager training step (forward, the trainer's loss, backward; no optimiser, no autocast) of each
    model dispatches (dispatch_count.py): operators, and the library calls among them (convolutions, matrix
    products, attention; forward and backward), which a compiled step still launches one by one."""
    rows, library_calls = [], {}
    for model in models:
        label = "nnU-Net 2D PlainConvUNet" if model == "U-Net" else \
            f"DANIE-{model}" + (f", {variant}" if variant != "plain" else "")
        parts = eager_step_counts(model, variant, patch, batch, in_chans, num_classes, device)
        total = sum(parts.values(), start=Counter())
        library_calls[model] = sum(total[k] for k in LIBRARY_KINDS)
        rows.append([label] + [str(parts[p]["operators"]) for p in ("forward", "loss", "backward")]
                    + [str(total["operators"])] + [str(total[k]) for k in LIBRARY_KINDS] + [str(library_calls[model])])
    reference = library_calls.get("U-Net")  # the ratio column, wherever --models puts the U-Net
    for model, row in zip(models, rows):
        row.append(f"{library_calls[model] / reference:.1f}x" if reference else "n/a")
    note = (f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}; torch "
            f"{torch.__version__}; one eager training step at {batch}x{in_chans}x{patch}x{patch}, {num_classes} "
            "classes, the trainers' losses with deep supervision; operators exclude views; library calls are "
            "counted forward and backward, each attention as CUDA's one kernel")
    return "\n".join([note, ""] + table_lines(LAUNCH_HEADER, rows))


def explain_compile(model: str, variant: str, patch: int, batch: int, in_chans: int, num_classes: int,
                    device: torch.device, amp_dtype: torch.dtype) -> str:
    """torch._dynamo.explain of a training forward (autocast as in training): graphs and graph-break reasons."""
    net = build_danie(model, patch, in_chans, num_classes, variant, batch=batch, compiled=True).to(device).train()
    x = torch.randn(batch, in_chans, patch, patch, device=device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
        explanation = torch._dynamo.explain(net)(x)
    lines = [f"DANIE-{model} {variant}, {batch}x{in_chans}x{patch}x{patch}, torch {torch.__version__}: "
             f"{explanation.graph_count} graph(s), {explanation.graph_break_count} graph break(s)"]
    lines += [f"break {i}: {reason}" for i, reason in enumerate(explanation.break_reasons)]
    return "\n".join(lines)


def resolve_device(device: str) -> torch.device:
    """'auto': CUDA where there is one, else the CPU; any other name as torch spells it."""
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        ("cpu" if device == "auto" else device))


def run_bench(device: str = "auto", configs: Sequence[tuple] = ((512, 12), (256, 24)), models=("U-Net", "S", "L"),
              compile_modes=(False, True), in_chans: int = 1, num_classes: int = 9, warmup: int = 3,
              iters: int = 10, amp: str = "bf16", peak_tflops: Optional[float] = None,
              variants: Sequence[str] = ("plain",), time_budget: Optional[float] = None,
              out: Optional[str] = None, compile_backend: str = "inductor", inference: bool = True) -> str:
    """The Markdown table, one row per (config, model, mode, variant); U-Net rows have no variants. Rows past
    `time_budget` seconds are listed as skipped; with `out`, the table is rewritten after every row; without
    `inference`, the inference columns are n/a (their cuDNN autotuning and graph captures take a minute a row)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown bench variants {unknown}; choose from {sorted(VARIANTS)}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training sets it
    amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if peak_tflops is None and dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    head = [f"device: {device_name}; torch {torch.__version__}; {in_chans} input channel(s), {num_classes} classes; "
            f"median of {iters} steps after {warmup} warm-up; peak {peak_tflops or 'n/a'} TFLOP/s; "
            + ("U-Net trains in fp16 with GradScaler, DANIE in bf16 (as their trainers); inference fp16"
               if dev.type == "cuda" else "CPU: U-Net in fp32, DANIE in float64 (checks, not speed)"), "",
            "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines, started = [], time.perf_counter()

    def table() -> str:
        return "\n".join(head + lines)

    for patch, batch in configs:
        for compiled in compile_modes:
            for model in models:
                for variant in (("plain",) if model == "U-Net" else variants):
                    if time_budget is not None and time.perf_counter() - started > time_budget:
                        lines.append(f"| {model} | {'compile' if compiled else 'eager'}, {variant} | {patch}x{patch} "
                                     f"| {batch} | skipped: past the {time_budget:.0f} s budget |")
                        continue
                    row_started = time.perf_counter()
                    try:
                        row = bench_row(model, variant, patch, batch, in_chans, num_classes, dev, compiled, warmup,
                                        iters, amp_dtype, compile_backend, inference)
                        lines.append("| " + " | ".join(row.cells(peak_tflops)) + " |")
                    except torch.OutOfMemoryError:
                        lines.append(f"| {model} | {variant} | {patch}x{patch} | {batch} | out of memory |")
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    if out:
                        with open(out, "w") as f:
                            f.write(table() + "\n")
                    print(lines[-1], flush=True)
                    # how long each row took (checks, cuDNN's autotuning, compiling): sizes the GPU script's limits
                    print(f"  row took {time.perf_counter() - row_started:.0f} s", file=sys.stderr, flush=True)
    return table()


def check_fast_paths(device: str = "auto", model: str = "L", patch: int = 256, batch: int = 2,
                     compile_check: bool = True, variants: Sequence[str] = tuple(VARIANTS),
                     compile_backend: str = "inductor") -> List[str]:
    """Each fast formulation (matmul heads with every variant, compiled too if asked) against the plain eager
    network in fp32 (CheckResult: at most CHECK_FACTOR x the plain network's own bf16 error + CHECK_FLOOR; on CPU
    all in float64, within CPU_CHECK_FLOOR). Returns report lines; raises AssertionError on a mismatch."""
    dev = resolve_device(device)
    lines, ok = [], True
    for compiled in ((False, True) if compile_check else (False,)):
        for v in variants:
            result, *_ = compare_with_plain(model, v, compiled, patch, batch, 1, 9, dev,
                                            compile_backend=compile_backend)
            ok &= result.passed
            lines.append(f"{v}{', ' + _mode_label(True, compile_backend) if compiled else ''} (matmul heads): "
                         f"rel. L2 error vs plain fp32 (CPU: all float64), outputs / gradients: {result}")
    precision = "bf16 autocast" if dev.type == "cuda" else "float64"
    lines.append(f"device {dev}, DANIE-{model}, {batch}x1x{patch}x{patch}, {precision}: "
                 f"{'all fast paths match' if ok else 'MISMATCH'}")
    if not ok:
        raise AssertionError("\n".join(lines))
    return lines


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="training/inference throughput of DANIE-S/L vs nnU-Net's 2D U-Net")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is one), cuda, cpu; meta for --launches "
                   "alone (counts without computing)")
    p.add_argument("--configs", default="512x12,256x24", help="comma-separated PATCHxBATCH, e.g. 512x12,256x24")
    p.add_argument("--models", default="U-Net,S,L")
    p.add_argument("--modes", default="eager,compile", help="eager, compile or both")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--variants", default="plain",
                   help=f"DANIE formulations, comma-separated: {', '.join(VARIANTS)} (cl = channels-last, rc = "
                        "activation recomputation, fit12 = as little recomputation as fits 12 GiB, fn = "
                        "MaxViT's LayerNorms in bf16); U-Net rows run as nnU-Net builds them")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compile mode, e.g. "
                   "aot_eager to tell AOTAutograd problems from Inductor ones, or one of DANIE's Inductor settings "
                   f"(danie_nnunet/compiled.py): {', '.join(COMPILE_SETTINGS)}")
    p.add_argument("--explain", action="store_true", help="only list torch.compile's graphs and graph breaks for "
                   "the first DANIE model and variant on the first config (training forward under autocast)")
    p.add_argument("--time-budget", type=float, default=None, help="skip the rows that would start after this "
                   "many seconds (the finished rows are kept)")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file (after every row)")
    p.add_argument("--train-only", action="store_true", help="time the training step alone (the inference "
                   "columns n/a): about a minute less a row on a cold GPU")
    p.add_argument("--check-fast-paths", action="store_true", help="only compare each fast formulation with the "
                   "plain one (no timing), on the first config and DANIE model; compiled too if --modes has compile")
    p.add_argument("--profile", action="store_true", help="only profile one training step of the first DANIE "
                   "model and variant on the first config (compiled with --modes compile): how much of the step the "
                   "device is busy, and the kernels that take most device time")
    p.add_argument("--launches", action="store_true", help="only count what one eager training step of each model "
                   "dispatches on the first config (first variant): operators, and the convolutions, matrix "
                   "products and attention calls among them, which a compiled step still launches one by one")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    danie_models = [m for m in args.models.split(",") if m != "U-Net"] or ["L"]
    variants = args.variants.split(",")
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    device = resolve_device(args.device)
    if device.type == "meta" and not args.launches:
        print("bench: --device meta only counts (--launches); timings, checks and profiles need cpu or cuda",
              file=sys.stderr)
        return 2
    if args.check_fast_paths or args.profile or args.explain or args.launches:
        if args.launches:
            text = launch_table(args.models.split(","), variants[0], *configs[0], args.in_chans, args.classes,
                                device)
        elif args.profile:
            text = profile_row(danie_models[0], variants[0], *configs[0], args.in_chans, args.classes,
                               device, amp_dtype, args.modes == "compile", args.compile_backend,
                               args.warmup, args.iters)
        elif args.explain:
            text = explain_compile(danie_models[0], variants[0], *configs[0], args.in_chans, args.classes,
                                   device, amp_dtype)
        else:
            try:
                text = "\n".join(check_fast_paths(args.device, danie_models[0], *configs[0],
                                                  compile_check="compile" in args.modes, variants=variants,
                                                  compile_backend=args.compile_backend))
            except AssertionError as e:
                print(e)
                return 1
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return 0
    table = run_bench(args.device, configs, args.models.split(","),
                      tuple(m == "compile" for m in args.modes.split(",")), args.in_chans, args.classes,
                      args.warmup, args.iters, args.amp, args.peak_tflops, variants, args.time_budget, args.out,
                      args.compile_backend, not args.train_only)
    print(table)
    return 1 if "| FAIL" in table else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    raise SystemExit(args.func(args))
