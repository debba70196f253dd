"""What the compiled DANIE keeps for its backward pass against the eager one, per slice (danie_nnunet/memory.py:
trace_compiled_share, the source of COMPILED_SHARE). Traced on the meta device, no GPU needed: about a minute per
model, size and batch on a CPU. Prints a Markdown table:

    python bench/compiled_memory.py [--models S,L] [--sizes 64,512] [--classes 9]
"""
from __future__ import annotations

import argparse
import time

import torch

from danie_nnunet.memory import COMPILED_SHARE, GIB, estimate_training_memory, trace_compiled_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="S,L")
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--batch", type=int, default=12, help="batch of the estimate columns")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; COMPILED_SHARE = {COMPILED_SHARE}\n")
    print(f"| model | patch | eager MiB/slice | compiled MiB/slice | share | estimate at batch {args.batch}, eager / "
          f"compiled GiB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            start = time.time()
            traced = trace_compiled_share(model, (size, size), args.in_chans, args.classes)
            eager, compiled = (estimate_training_memory(model, (size, size), args.in_chans, args.classes,
                                                        compiled=c).total_gib(args.batch) for c in (False, True))
            print(f"| {model} | {size} | {traced.eager / GIB * 1024:.1f} | {traced.compiled / GIB * 1024:.1f} | "
                  f"{traced.share:.3f} | {eager:.2f} / {compiled:.2f} | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
