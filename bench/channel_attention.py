"""ES (ChannelSelfAttention, Eq. 6-7) alone, forward and backward at the four Joint Preservation levels of DANIE-S
and DANIE-L, as the network runs it (a channels-last bf16 input, computed in fp32): the formulation before the
ninth session (channels-major, one C x C product over all H*W positions, layout copies in and out) against the
module as it is now (positions-major, split over chunks of positions). The H100's compiled DANIE-S profile had
4 calls of one fp32 GEMM kernel at 345 us each (4.7 TFLOP/s): the unsplit C x C energy. Each row checks the two
give the same output and input gradient. Prints a Markdown table:

    python bench/channel_attention.py [--models S,L] [--size 512] [--batch 12] [--device auto] [--iters 20] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

import torch

from danie_nnunet.bench import resolve_device
from danie_nnunet.config import VARIANTS
from danie_nnunet.context import ChannelSelfAttention, channel_attention_channels_major, position_chunks
from danie_nnunet.markdown import save_lines


def before_split(s: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """ES as written up to the eighth session: the channels-major form (today's NCHW path) on the channels-last
    input, so NCHW in between, and converted back to channels-last."""
    with torch.autocast(s.device.type, enabled=False):
        q = s.float()
        es = gamma * channel_attention_channels_major(q) + q
    return es.to(dtype=s.dtype, memory_format=torch.channels_last)


def _timed(fn, s: torch.Tensor, grad: torch.Tensor, iters: int, device: torch.device):
    def step():
        x = s.detach().requires_grad_()
        out = fn(x)
        out.backward(grad)
        return out.detach(), x.grad

    for _ in range(2):  # warm-up: cuBLAS heuristics, allocator
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        result = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3, result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="S,L")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    lines = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    device = resolve_device(args.device)
    # bf16 input as under the trainers' autocast; on a CPU float32 (denormals flushed: the softmax of large
    # energies leaves denormal weights, which x86 multiplies far more slowly, the two forms unequally)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_flush_denormal(device.type == "cpu")
    emit(f"device {device}; torch {torch.__version__}; batch {args.batch}, {args.size} x {args.size} patch, "
          f"{dtype} channels-last input, ES in fp32; forward + backward, mean of {args.iters} after 2 warm-up")
    emit()
    emit("| model | level | C x H x W | chunks | before: ms | now: ms | speed-up | rel. error: output | input gradient |")
    emit("|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for model in args.models.split(","):
        for level, c in enumerate(VARIANTS[model].dims):
            side = args.size // 2 ** (level + 2)
            s = torch.randn(args.batch, c, side, side, generator=g).to(device, dtype)
            s = s.contiguous(memory_format=torch.channels_last)
            grad = torch.randn(s.shape, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
            es = ChannelSelfAttention().to(device)
            with torch.no_grad():
                es.gamma.fill_(0.5)
            gamma = es.gamma.detach()
            ms_before, (out_before, grad_before) = _timed(lambda x: before_split(x, gamma), s, grad, args.iters,
                                                          device)
            ms_now, (out_now, grad_now) = _timed(es, s, grad, args.iters, device)
            emit(f"| DANIE-{model} | {level + 1} | {c} x {side} x {side} | {position_chunks(side * side, c)} | "
                  f"{ms_before:.3f} | {ms_now:.3f} | {ms_before / ms_now:.2f}x | {_rel(out_now, out_before):.1e} | "
                  f"{_rel(grad_now, grad_before):.1e} |")
    save_lines(lines, args.out)


if __name__ == "__main__":
    main()
