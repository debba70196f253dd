"""The optimiser step of nnU-Net's train_step with a guard against NaN/Inf losses and gradients.

nnU-Net's fp16 path relies on the GradScaler, which silently skips steps with Inf gradients and halves the
loss scale forever when every loss is NaN (e.g. NaN voxels in an image); with bf16 or fp32 there is no
scaler, and one NaN gradient is written into every weight by the optimiser. Here a step whose loss (or,
without a scaler, gradient norm) is not finite is skipped, counted, and `patience` such steps in a row stop
the run with a message naming the likely causes. Everything else is nnU-Net's step: backward, gradient
clipping at norm 12, GradScaler when present.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist

LIKELY_CAUSES = (
    "Likely causes: (1) NaN or Inf voxels in the training images: check them with `danie-nnunet check-dataset "
    "$nnUNet_raw/DatasetXXX_Name` (nnU-Net's `nnUNetv2_plan_and_preprocess --verify_dataset_integrity` finds NaN "
    "but not Inf), fix the images and preprocess again; (2) a learning rate too high for this data (DANIE uses "
    "AdamW at 1e-4; a subclass with a larger initial_lr diverges); (3) fp16 overflow under mixed precision on a "
    "GPU without bf16: the GradScaler cannot recover from a NaN loss; train on a bf16 card (Ampere or newer) or "
    "with fp32. The last checkpoint (checkpoint_latest.pth) holds weights from before the failure: fix the "
    "cause and resume with `nnUNetv2_train ... --c`.")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps with a NaN/Inf loss or gradient."""


def _finite_on_every_rank(value: torch.Tensor, ddp: bool) -> bool:
    # DDP ranks must agree, else one rank skips backward while the others wait in its all-reduce
    ok = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if ddp:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


class NonFiniteStepGuard:
    """Counts skipped steps; raises NonFiniteLossError after `patience` consecutive ones."""

    def __init__(self, patience: int = 10, max_grad_norm: float = 12.0):
        self.patience, self.max_grad_norm = patience, max_grad_norm
        self.consecutive = 0  # skipped steps in a row
        self.skipped = 0  # skipped steps in total
        self.last_reason = ""

    def backward_and_step(self, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter],
                          optimizer: torch.optim.Optimizer, grad_scaler: Optional[torch.amp.GradScaler] = None,
                          ddp: bool = False) -> bool:
        """nnU-Net's backward + clip + step; returns False (weights untouched) when the step was skipped."""
        parameters = list(parameters)
        if not _finite_on_every_rank(loss, ddp):
            # no backward: nothing reaches the weights, the optimiser state or the GradScaler's loss scale
            return self._skip(f"the loss is {loss.detach().float().item()}")
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            grad_scaler.step(optimizer)  # skips steps with Inf gradients itself (routine fp16 loss scaling)
            grad_scaler.update()
        else:
            loss.backward()
            # gradients are all-reduced by DDP before this point, so every rank sees the same norm
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            if not torch.isfinite(norm):
                optimizer.zero_grad(set_to_none=True)
                return self._skip(f"the gradient norm is {norm.item()} (loss {loss.detach().float().item():.4g})")
            optimizer.step()
        self.consecutive = 0
        return True

    def _skip(self, reason: str) -> bool:
        self.consecutive += 1
        self.skipped += 1
        self.last_reason = reason
        if self.consecutive >= self.patience:
            raise NonFiniteLossError(
                f"DANIE stopped training: {self.consecutive} training steps in a row were skipped because "
                f"{reason}; weights were not updated by them. {LIKELY_CAUSES}")
        return False
