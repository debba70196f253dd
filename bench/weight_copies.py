"""What autocast's weight casts cost a DANIE training step, and what one copy per step (DANIE_cast_weights_once,
danie_nnunet/weight_cast.py) leaves: operators of an eager step and, with --compile, the kernels Inductor generates
for a compiled one, with and without the copies, on the CPU under its bf16 autocast (which casts the convolution and
linear weights as CUDA's does). Counts, not timings: a CPU cannot say what a launch costs a GPU. With --compile
several minutes per row on this project's CPU. Prints a Markdown table:

    python bench/weight_copies.py [--models S,L] [--patch 64] [--batch 2] [--compile]
"""
from __future__ import annotations

import argparse
import time

import torch

from danie_nnunet.bench import danie_training_step
from danie_nnunet.compiled import generated_kernels
from danie_nnunet.dispatch_count import count_dispatch
from danie_nnunet.markdown import table_lines


def count_step(model: str, patch: int, batch: int, copies: bool, compiled: bool) -> dict:
    """One training step (forward, the trainer's loss, backward, and the copies' refresh and widening where used):
    the operators and casts of the second eager step, or the kernels Inductor generates compiling the first."""
    cpu = torch.device("cpu")
    torch._dynamo.reset()
    # the CPU's bf16 autocast standing in for a card's
    step, x = danie_training_step(model, "cl+wcopy" if copies else "cl", compiled, patch, batch, 1, 9, cpu,
                                  torch.bfloat16, dtype=torch.float32, autocast_off_cuda=True)
    result = {"copied": len(step.weights) if copies else 0}
    if compiled:
        result["count"] = generated_kernels(lambda: step.forward_backward(x))
    else:
        step.forward_backward(x)  # the copies are made at the first call
        counts = count_dispatch(lambda: step.forward_backward(x))
        result["count"], result["casts"] = counts["operators"] - counts["allocations"], counts["casts"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="S,L")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="count Inductor's generated kernels of a compiled "
                        "step instead of an eager step's operators")
    args = parser.parse_args()
    what = "generated kernels (compiled)" if args.compile else "operators (eager)"
    rows = []
    for model in args.models.split(","):
        counts = {}
        for copies in (False, True):
            start = time.time()
            counts[copies] = count_step(model, args.patch, args.batch, copies, args.compile)
            counts[copies]["seconds"] = time.time() - start
        cells = [f"{counts[c]['count']}" + (f" ({counts[c]['casts']} casts)" if "casts" in counts[c] else "")
                 for c in (False, True)]
        rows.append([f"DANIE-{model}", str(counts[True]["copied"]), *cells,
                     str(counts[False]["count"] - counts[True]["count"]),
                     f"{counts[False]['seconds']:.0f} / {counts[True]['seconds']:.0f}"])
    print(f"torch {torch.__version__}, CPU, bf16 autocast; {args.batch}x1x{args.patch}x{args.patch}, 9 classes, "
          f"channels-last; one training step (views and allocations not counted, each attention as CUDA's one "
          "kernel)\n")
    print("\n".join(table_lines(["model", "weights copied", f"{what}: autocast's casts", "one copy per step",
                                 "fewer", "seconds"], rows)))


if __name__ == "__main__":
    main()
