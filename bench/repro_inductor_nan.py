"""Minimal reproduction: DANIE's stream aggregation e = ES(s) + EH(h) (Eq. 10) compiled by Inductor under bf16
autocast gives NaN input gradients, while eager, aot_eager and fp32 runs are finite.

Seen with torch 2.14.1 on CPU and (as NaN gradients of the whole compiled DANIE-L) with torch 2.11 on an H200,
2026-11-26; docs/performance.md. Each enhancer compiled alone is fine; the 256 x 4 x 4 level is fine too.
Inductor's decompositions and partitioner with eager kernels (backend aot_eager_decomp_partition) are fine, and
so is Inductor without fusion (realize_opcount_threshold=0, the last row): a fusion bug of Inductor's lowering.
(That setting does not make the whole compiled DANIE finite: other graphs of it have the problem too.)
Run it to see whether a torch version still has the problem (about a minute on a CPU):

    python bench/repro_inductor_nan.py [--device cuda]
"""
from __future__ import annotations

import argparse
import copy

import torch

from danie_nnunet.context import ChannelSelfAttention, GlobalContextGate


class Aggregation(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.es = ChannelSelfAttention()
        self.eh = GlobalContextGate(channels)

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.es(s) + self.eh(h)


def gradients(module, s, h, amp: bool):
    s, h = s.clone().requires_grad_(), h.clone().requires_grad_()
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=amp):
        out = module(s, h)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(s.device)
    (out.float() * weights).sum().backward()
    return s.grad.float(), h.grad.float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    failures = 0
    for channels, size in ((128, 8), (64, 16), (256, 4)):
        torch.manual_seed(0)
        module = Aggregation(channels).to(args.device)
        s = torch.randn(2, channels, size, size, device=args.device)
        h = torch.randn(2, channels, size, size, device=args.device)
        for backend, amp in (("inductor", True), ("aot_eager", True), ("inductor", False), ("unfused", True)):
            ref = gradients(copy.deepcopy(module), s, h, amp)
            torch._dynamo.reset()
            options = {"realize_opcount_threshold": 0} if backend == "unfused" else None
            compiled = gradients(torch.compile(copy.deepcopy(module), backend="inductor" if options else backend,
                                               options=options), s, h, amp)
            nan = any(g.isnan().any().item() for g in compiled)
            errors = [((c - r).norm() / r.norm()).item() for c, r in zip(compiled, ref)]
            failures += nan
            print(f"C={channels} {size}x{size} {backend:9s} {'bf16' if amp else 'fp32'}: "
                  + ("NaN gradients" if nan else f"rel. L2 error of grad s / grad h {errors[0]:.1e} / {errors[1]:.1e}"))
    print(f"{failures} of 12 runs with NaN gradients")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
