"""`danie-nnunet bench`: DANIE-S, DANIE-L and nnU-Net's default 2D U-Net on one device, one process.

For each model and (patch, batch): a full training step with the trainer's loss and optimiser (DANIE: 0.7 Dice
+ 0.3 CE on the four heads, AdamW; U-Net: nnU-Net's Dice + CE with its deep-supervision weights, SGD 0.99
nesterov), gradient clipping at 12 as nnU-Net does; then inference throughput as nnU-Net's predictor runs it
(eval, no grad, deep supervision off, fp16 autocast on CUDA). Prints a Markdown table.

Achieved TFLOP/s counts 3x the forward FLOPs per training step (forward + backward) and 1x for inference;
forward FLOPs come from torch's FlopCounterMode (the heads' upsampling counted as in `cost.py`). This tool
imports nnunetv2 and dynamic-network-architectures (for the U-Net and the losses); the network code does not.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Sequence

import torch

# dense bf16 tensor-core peaks (TFLOP/s) by device name, for the "share of peak" column
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "4090": 165.0}


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

    def cells(self, peak: Optional[float]) -> List[str]:
        share = f"{100 * self.train_tflops / peak:.1f}%" if peak else "n/a"
        return [self.model, self.mode, f"{self.patch}x{self.patch}", str(self.batch), f"{self.train_ms:.1f}",
                f"{self.train_slices_s:.1f}", f"{self.train_tflops:.3g}", share,
                f"{self.peak_gib:.2f}" if self.peak_gib >= 0 else "n/a", f"{self.infer_slices_s:.1f}",
                f"{self.infer_tflops:.3g}"]


HEADER = ["model", "mode", "patch", "batch", "train step ms", "train slices/s", "train TFLOP/s", "share of peak",
          "peak GiB", "inference slices/s", "inference TFLOP/s"]


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


def _losses(kind: str, n_outputs: int, patch: int):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    if kind == "danie":
        loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                              weight_ce=0.3, weight_dice=0.7, dice_class=MemoryEfficientSoftDiceLoss)
        return DeepSupervisionWrapper(loss, [0.0] + [1.0] * (n_outputs - 1)), [1.0] * n_outputs
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
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


def bench_model(name: str, build: Callable[[], torch.nn.Module], build_for_flops: Callable[[], torch.nn.Module],
                kind: str, patch: int, batch: int,
                in_chans: int, num_classes: int, device: torch.device, compile_model: bool, warmup: int,
                iters: int, amp_dtype: torch.dtype) -> BenchRow:
    fwd_flops = _forward_flops(build_for_flops, in_chans, patch) * batch
    net = build().to(device)
    x = torch.randn(batch, in_chans, patch, patch, device=device)
    net.train()
    with torch.no_grad():
        n_outputs = len(net(x[:1]))
    loss_fn, scales = _losses(kind, n_outputs, patch)
    target_full = torch.randint(0, num_classes, (batch, 1, patch, patch), device=device).float()
    targets = [target_full if s == 1 else torch.nn.functional.interpolate(
        target_full, scale_factor=s, mode="nearest-exact") for s in scales]
    if kind == "danie":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    model = torch.compile(net) if compile_model else net
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = loss_fn(model(x), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = _timed(train_step, device, warmup, iters)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else -1.0
    net.eval()
    if hasattr(net, "deep_supervision"):
        net.deep_supervision = False
    else:
        net.decoder.deep_supervision = False
    infer_model = torch.compile(net) if compile_model else net

    def infer_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            infer_model(x)

    infer_s = _timed(infer_step, device, warmup, iters)
    mode = ("compile" if compile_model else "eager") + (f", {str(amp_dtype).split('.')[-1]}" if use_amp else ", fp32")
    return BenchRow(name, mode, patch, batch, 1e3 * train_s, batch / train_s, 3 * fwd_flops / train_s / 1e12,
                    peak, batch / infer_s, fwd_flops / infer_s / 1e12)


def run_bench(device: str = "auto", configs: Sequence[tuple] = ((512, 12), (256, 24)), models=("U-Net", "S", "L"),
              compile_modes=(False, True), in_chans: int = 1, num_classes: int = 9, warmup: int = 3,
              iters: int = 10, amp: str = "bf16", peak_tflops: Optional[float] = None) -> str:
    from .network import create_danie
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if peak_tflops is None and dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    rows = []
    for patch, batch in configs:
        for model in models:
            for compiled in compile_modes:
                if model == "U-Net":
                    build = flops_build = lambda p=patch: nnunet_unet(p, in_chans, num_classes)  # noqa: E731
                    kind, label = "unet", "nnU-Net 2D PlainConvUNet"
                else:
                    def build(p=patch, m=model, up="matmul"):
                        return create_danie(m, (p, p), in_chans, num_classes, deep_supervision=True,
                                            head_upsample=up)
                    flops_build = partial(build, up="interpolate")  # counted as in cost.py
                    kind, label = "danie", f"DANIE-{model}"
                rows.append(bench_model(label, build, flops_build, kind, patch, batch, in_chans, num_classes, dev,
                                        compiled, warmup, iters, amp_dtype))
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    lines = [f"device: {device_name}; torch {torch.__version__}; {in_chans} input channel(s), {num_classes} classes; "
             f"median of {iters} steps after {warmup} warm-up; peak {peak_tflops or 'n/a'} TFLOP/s", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells(peak_tflops)) + " |" for r in rows]
    return "\n".join(lines)


def check_fast_paths(device: str = "auto", variant: str = "L", patch: int = 256, batch: int = 2,
                     compile_check: bool = True) -> List[str]:
    """Each fast formulation against the plain one, same weights and input, within bf16 tolerance on CUDA
    (fp32 on CPU): matmul vs F.interpolate head upsampling (outputs and gradients), torch.compile vs eager.
    Returns report lines; raises AssertionError on a mismatch."""
    from .network import create_danie
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    amp = dev.type == "cuda"
    atol, rtol = (0.05, 0.05) if amp else (1e-4, 1e-4)
    torch.manual_seed(0)
    plain = create_danie(variant, (patch, patch), 1, 9, deep_supervision=True, head_upsample="interpolate").to(dev)
    fast = create_danie(variant, (patch, patch), 1, 9, deep_supervision=True, head_upsample="matmul").to(dev)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(batch, 1, patch, patch, device=dev)
    lines = []

    def run(net):
        net.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
            loss = sum(o.float().square().mean() for o in out[1:])
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in net.parameters()])
        return [o.detach().float() for o in out], grads

    def compare(what, a, b):
        err = (a - b).abs().max().item()
        scale = b.abs().max().item()
        ok = err <= atol + rtol * scale
        lines.append(f"{'PASS' if ok else 'FAIL'} {what}: max |diff| {err:.3g} (max |ref| {scale:.3g}, "
                     f"tolerance {atol} + {rtol} x ref)")
        return ok

    out_p, g_p = run(plain)
    out_f, g_f = run(fast)
    ok = all([compare("matmul heads vs interpolate: y", out_f[0], out_p[0]),
              compare("matmul heads vs interpolate: heads", torch.stack(out_f[1:]), torch.stack(out_p[1:])),
              compare("matmul heads vs interpolate: gradients", g_f, g_p)])
    if compile_check:
        out_c, g_c = run(torch.compile(fast))
        ok &= compare("torch.compile vs eager: y", out_c[0], out_f[0])
        ok &= compare("torch.compile vs eager: gradients", g_c, g_f)
    lines.append(f"device {dev}, DANIE-{variant}, {batch}x1x{patch}x{patch}, "
                 f"{'bf16 autocast' if amp else 'fp32'}: {'all fast paths match' if ok else 'MISMATCH'}")
    if not ok:
        raise AssertionError("\n".join(lines))
    return lines


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="training/inference throughput of DANIE-S/L vs nnU-Net's 2D U-Net")
    p.add_argument("--device", default="auto")
    p.add_argument("--configs", default="512x12,256x24", help="comma-separated PATCHxBATCH, e.g. 512x12,256x24")
    p.add_argument("--models", default="U-Net,S,L")
    p.add_argument("--modes", default="eager,compile", help="eager, compile or both")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--check-fast-paths", action="store_true", help="only compare each fast formulation with the "
                   "plain one (no timing), on the first config and DANIE model; compiled too if --modes has compile")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    if args.check_fast_paths:  # on the first configuration and the first DANIE model asked for
        variant = next((m for m in args.models.split(",") if m != "U-Net"), "L")
        try:
            print("\n".join(check_fast_paths(args.device, variant, configs[0][0], configs[0][1],
                                              compile_check="compile" in args.modes)))
        except AssertionError as e:
            print(e)
            return 1
        return 0
    table = run_bench(args.device, configs, args.models.split(","),
                      tuple(m == "compile" for m in args.modes.split(",")), args.in_chans, args.classes,
                      args.warmup, args.iters, args.amp, args.peak_tflops)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    raise SystemExit(args.func(args))
