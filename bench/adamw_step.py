"""DANIETrainer's AdamW step alone: torch's default implementation, foreach and fused, on DANIE-S's and DANIE-L's
parameters with the gradients of one real training backward pass (deep supervision: cross-entropy on the four
heads). The trainer's AdamW is fused on CUDA and, since the tenth session, on a CPU too: it was the
default (single-tensor) there. Denormals are not flushed: the step sees what a CPU training run sees. Each
implementation starts from the same weights and moments; the rows also give how far its weights after the timed
steps are from the default's (the same update, rounded differently). Prints a Markdown table:

    python bench/adamw_step.py [--models S,L] [--size 64] [--batch 2] [--device auto] [--iters 5] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from danie_nnunet.bench import resolve_device
from danie_nnunet.markdown import print_and_save, table_lines
from danie_nnunet.network import create_danie

IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _gradients(model: str, size: int, batch: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_danie(model, (size, size), 1, 9, deep_supervision=True).to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    target = torch.randint(0, 9, (batch, size, size), device=device)
    sum(torch.nn.functional.cross_entropy(o, target) for o in net(x)[1:]).backward()
    return net


def _timed_steps(net: torch.nn.Module, options: dict, iters: int, device: torch.device):
    grads = [p.grad for p in net.parameters()]
    net = copy.deepcopy(net)  # the weights; deepcopy leaves the gradients behind
    for p, g in zip(net.parameters(), grads):
        p.grad = g.clone()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4, **options)
    optimizer.step()  # warm-up: creates the moments
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3, torch.cat([p.detach().flatten() for p in net.parameters()])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="S,L")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    lines = [f"device {device}; torch {torch.__version__}; {torch.get_num_threads()} threads; gradients of one "
             f"backward pass at {args.size} x {args.size}, batch {args.batch}; mean of {args.iters} steps after one",
             ""]
    rows = []
    for model in args.models.split(","):
        net = _gradients(model, args.size, args.batch, device)
        params = list(net.parameters())
        results = {name: _timed_steps(net, options, args.iters, device) for name, options in IMPLEMENTATIONS.items()}
        default_ms, default_weights = results["default"]
        for name, (ms, weights) in results.items():
            error = ((weights - default_weights).norm() / default_weights.norm()).item()
            rows.append([f"DANIE-{model}", f"{sum(p.numel() for p in params) / 1e6:.1f} M", str(len(params)), name,
                         f"{ms:.1f}", f"{default_ms / ms:.2f}x", f"{error:.1e}"])
    lines += table_lines(["model", "parameters", "tensors", "AdamW", "ms per step", "vs default",
                          "weights vs default (rel. L2)"], rows)
    print_and_save(lines, args.out)


if __name__ == "__main__":
    main()
