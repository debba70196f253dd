"""nnU-Net's test-time mirroring of single tiles, as its predictor runs it (`_internal_maybe_mirror_and_predict`:
the tile and its three flips, one network call each), with DANIE's mirror batching (danie_nnunet/mirror_batching.py)
and without. Each row: tiles per second and how far the batched prediction is from the unbatched one. On CUDA
both run with CUDA graphs (the trainers' default) and fp16 autocast, as the predictor does; on CPU in fp32.
Prints a Markdown table:

    python bench/mirror_batching.py [--models S,L] [--size 512] [--device auto] [--tiles 20]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from danie_nnunet import create_danie
from danie_nnunet.bench import resolve_device


def _predictor(network: torch.nn.Module, device: torch.device):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=device.type == "cuda",
                                device=device, verbose=False, allow_tqdm=False)
    predictor.network, predictor.allowed_mirroring_axes = network, (0, 1)
    return predictor


def _timed_tiles(network: torch.nn.Module, tiles, device: torch.device) -> tuple:
    mirrored = _predictor(network, device)._internal_maybe_mirror_and_predict
    amp = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        for tile in tiles[:2]:  # warm-up: cuDNN's algorithm search, graph capture
            mirrored(tile)
        if amp:
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictions = [mirrored(tile).float() for tile in tiles[2:]]
        if amp:
            torch.cuda.synchronize()
    return len(predictions) / (time.perf_counter() - start), predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="S,L")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiles", type=int, default=20)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}; torch {torch.__version__}; {args.size} x {args.size} tiles, 1 channel, 9 classes; "
          f"{args.tiles} tiles after 2 warm-up; {'CUDA graphs, fp16 autocast' if device.type == 'cuda' else 'fp32'}\n")
    print("| model | mirrored tiles/s, unbatched (4 calls) | batched (1 forward of 4) | speed-up | "
          "rel. L2 error of the batched predictions |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    tiles = [torch.randn(1, 1, args.size, args.size, generator=g).to(device) for _ in range(args.tiles + 2)]
    for model in args.models.split(","):
        torch.manual_seed(0)
        plain = create_danie(model, (args.size, args.size), 1, 9).to(device).eval().set_channels_last()
        if device.type == "cuda":
            plain.set_cuda_graphs()
        batched = copy.deepcopy(plain).set_mirror_batching()
        rate_plain, reference = _timed_tiles(plain, tiles, device)
        rate_batched, predictions = _timed_tiles(batched, tiles, device)
        error = max(((p - r).norm() / r.norm()).item() for p, r in zip(predictions, reference))
        print(f"| DANIE-{model} | {rate_plain:.1f} | {rate_batched:.1f} | {rate_batched / rate_plain:.2f}x | "
              f"{error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
