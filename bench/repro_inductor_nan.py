"""The two PyTorch problems behind compiled DANIE's NaN gradients on CPU, each in a few lines (about a minute).

1. Inductor's C++ backend (AVX-512) miscompiles an elementwise kernel that reads two bf16 tensors through 32 x 32
   transposed tiles: garbage and NaN in the output. The same kernel with 256-bit vectors (`cpp.simdlen=256`),
   either read alone, or fp32 inputs, are right. Seen with torch 2.14.1 on an Intel Xeon with AVX-512 BF16/AMX,
   GCC 12.2, 2026-11-26.
2. AOTAutograd traces a compiled region's backward under the forward's autocast by default
   (`torch._functorch.config.backward_pass_autocast="same_as_forward"`, pytorch/pytorch#153044), while eager
   autograd runs every backward op in its forward op's dtypes. DANIE's ES block runs in fp32 with autocast off, so
   its compiled backward becomes bf16 (3e-3 from eager), and its bf16 operands meet problem 1 in the fused
   kernel of DANIE's stream aggregation ES(s) + EH(h) (Eq. 10): NaN input gradients. With "off"
   (danie_nnunet/compiled.py, used by DANIETrainer and the bench when they compile) the aggregation is right.

Problem 1 appears in other bf16 kernels of the whole network too (its forward runs in bf16 under autocast), so on
such a CPU the whole compiled DANIE also needs `cpp.simdlen=256` (docs/performance.md). Problem 1 is in the C++
backend only; whether problem 2 was behind the NaN gradients on an H200 (Triton kernels) is for the next GPU
session to check (`bash bench/gpu_checks.sh compile`). Run:

    python bench/repro_inductor_nan.py
"""
from __future__ import annotations

import copy

import torch
import torch._inductor.config as inductor_config

from danie_nnunet.compiled import backward_outside_autocast
from danie_nnunet.context import ChannelSelfAttention, GlobalContextGate


def _two_transposed_bf16_reads(a, b, c):
    return b + a.float() + c.transpose(1, 2).reshape(b.shape).float()


def problem_1() -> None:
    """Wrong elements of the compiled kernel, default vector width and 256-bit (a bug in torch, not DANIE)."""
    torch.manual_seed(0)
    a = torch.randn(2, 128, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    b = torch.randn(2, 128, 8, 8)
    c = torch.randn(2, 64, 128).to(torch.bfloat16)
    expected = _two_transposed_bf16_reads(a, b, c)
    for simdlen in (None, 256):
        torch._dynamo.reset()
        with inductor_config.patch({"cpp.simdlen": simdlen}):
            out = torch.compile(_two_transposed_bf16_reads)(a, b, c)
        wrong = int((out != expected).sum())
        print(f"problem 1, simdlen {simdlen or 'default'}: {wrong} of {out.numel()} elements wrong, "
              f"{int(out.isnan().sum())} NaN")


class Aggregation(torch.nn.Module):
    """ES(s) + EH(h), or ES(s) alone."""

    def __init__(self, channels: int, with_eh: bool = True):
        super().__init__()
        self.es = ChannelSelfAttention()
        self.eh = GlobalContextGate(channels) if with_eh else None

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.es(s) + self.eh(h) if self.eh is not None else self.es(s)


def _input_gradients(module, s, h):
    s, h = s.clone().requires_grad_(), h.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(s, h)
    (out.float() * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return s.grad if h.grad is None else torch.cat([s.grad.flatten(), h.grad.flatten()])


def problem_2() -> int:
    """ES alone (backward precision) and the aggregation (NaN), backward traced under autocast and outside it."""
    s, h = torch.randn(2, 128, 8, 8), torch.randn(2, 128, 8, 8)
    failures = 0
    for name, with_eh in (("ES", False), ("ES + EH", True)):
        torch.manual_seed(0)
        module = Aggregation(128, with_eh)
        module.es.gamma.data.fill_(0.5)  # learned from 0; 0 would hide ES's gradient path
        eager = _input_gradients(copy.deepcopy(module), s, h)
        under_autocast = torch._functorch.config.patch(backward_pass_autocast="same_as_forward")
        for setting, context in (("same_as_forward", under_autocast), ("off", backward_outside_autocast())):
            torch._dynamo.reset()
            with context:
                got = _input_gradients(torch.compile(copy.deepcopy(module)), s, h)
            bad = bool(got.isnan().any())
            failures += setting == "off" and bad
            error = "NaN" if bad else f"{((got - eager).norm() / eager.norm()).item():.1e} from eager"
            print(f"problem 2, {name}, backward_pass_autocast={setting}: input gradients {error}")
    return failures


def main() -> int:
    problem_1()  # torch's own bug: reported, not counted
    return 1 if problem_2() else 0


if __name__ == "__main__":
    raise SystemExit(main())
