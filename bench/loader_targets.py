"""What DANIE's five full-resolution targets cost nnU-Net's data loader, per batch: nnU-Net's training transforms
(2D, rotation, scaling, mirroring, intensity augmentation) for each sample of a batch and the collation into batch
tensors as `nnUNetDataLoader` does it, then one copy of each batch tensor as the pin-memory thread of nnU-Net's
multi-process loader makes it (pinned on a CUDA machine). Before the tenth session DANIETrainer asked for five
deep-supervision targets at scale 1 (y and the four heads are all at full resolution), so each batch carried five
equal segmentation tensors through the workers' queues, the pinning and five host-to-device copies; it now asks
for none and repeats the one target on the device. One worker, one thread, as nnU-Net's workers run. Prints a
Markdown table:

    python bench/loader_targets.py [--size 512] [--batch 12] [--batches 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from danie_nnunet.markdown import print_and_save, table_lines
from danie_nnunet.trainers.danie_trainer import NUM_HEADS


def _batch(transforms, image: torch.Tensor, segmentation: torch.Tensor, batch: int) -> list:
    targets = None
    for j in range(batch):
        sample = transforms(image=image.clone(), segmentation=segmentation.clone())["segmentation"]
        sample = sample if isinstance(sample, list) else [sample]
        if targets is None:
            targets = [torch.empty((batch, *s.shape), dtype=s.dtype) for s in sample]
        for target, s in zip(targets, sample):
            target[j] = s
    return [t.pin_memory() if torch.cuda.is_available() else t.clone() for t in targets]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, args.size, args.size, generator=g)
    segmentation = torch.randint(0, 9, (1, args.size, args.size), generator=g).to(torch.int16)
    patch = (args.size, args.size)
    lines = [f"torch {torch.__version__}; one thread; {args.size} x {args.size}, batch {args.batch}; mean of "
             f"{args.batches} batches after one", ""]
    rows = {}
    for name, scales in (("five (before)", [[1.0, 1.0]] * (NUM_HEADS + 1)), ("one (now)", None)):
        transforms = nnUNetTrainer.get_training_transforms(patch, (-np.pi, np.pi), scales, (0, 1), False)
        torch.manual_seed(0)
        targets = _batch(transforms, image, segmentation, args.batch)  # warm-up
        start = time.perf_counter()
        for _ in range(args.batches):
            targets = _batch(transforms, image, segmentation, args.batch)
        rows[name] = ((time.perf_counter() - start) / args.batches * 1e3,
                      sum(t.numel() * t.element_size() for t in targets) / 2 ** 20)
    five_ms = rows["five (before)"][0]
    lines += table_lines(["targets per batch", "ms per batch", "vs five", "target MB per batch"],
                         [[name, f"{ms:.1f}", f"{five_ms / ms:.2f}x", f"{mb:.2f}"] for name, (ms, mb) in rows.items()])
    print_and_save(lines, args.out)


if __name__ == "__main__":
    main()
