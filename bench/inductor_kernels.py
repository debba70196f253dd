"""How many kernels Inductor generates for one compiled training step (forward and backward, the trainers'
losses), DANIE-S/L against nnU-Net's default 2D U-Net, on the CPU: a proxy for what a compiled step launches from
the host besides its library calls (`danie-nnunet bench --launches`). CPU code generation fuses differently from
CUDA's, so the counts are not the GPU's; the ratio between the models is the point. Several minutes per model on
this project's CPU (most of it compiling). Prints a Markdown table:

    python bench/inductor_kernels.py [--models U-Net,S] [--patch 512] [--batch 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from danie_nnunet.bench import danie_training_step, unet_training_step
from danie_nnunet.compiled import generated_kernels
from danie_nnunet.markdown import table_lines


def kernels_per_step(model: str, patch: int, batch: int, in_chans: int, num_classes: int) -> int:
    """Kernels Inductor generates when it compiles a training step of `model` (eager forward + backward once)."""
    cpu = torch.device("cpu")
    torch._dynamo.reset()  # else a model reuses the Dice loss another model compiled (fewer kernels of its own)
    if model == "U-Net":
        step, x = unet_training_step(patch, batch, in_chans, num_classes, cpu, compiled=True)
    else:  # the bench builds DANIE in float64 on CPU for its checks; a trainer runs fp32
        step, x = danie_training_step(model, "cl", True, patch, batch, in_chans, num_classes, cpu, None)
        step.net.float()
        x = x.float()
    return generated_kernels(lambda: step.forward_backward(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="U-Net,S")
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--classes", type=int, default=9)
    args = parser.parse_args()
    rows, counts = [], {}
    for model in args.models.split(","):
        start = time.time()
        counts[model] = kernels_per_step(model, args.patch, args.batch, args.in_chans, args.classes)
        rows.append([model, str(counts[model]), f"{time.time() - start:.0f}"])
    if "U-Net" in counts:
        for row in rows:
            row.append(f"{counts[row[0]] / counts['U-Net']:.1f}x")
    print(f"torch {torch.__version__}, Inductor on the CPU; {args.batch}x{args.in_chans}x{args.patch}x{args.patch}, "
          f"{args.classes} classes\n")
    header = ["model", "generated kernels", "seconds"] + (["vs U-Net"] if "U-Net" in counts else [])
    print("\n".join(table_lines(header, rows)))


if __name__ == "__main__":
    main()
