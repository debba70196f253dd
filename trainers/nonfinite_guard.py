"""The optimiser step of nnU-Net's train_step with a guard against NaN/Inf losses and gradients.

nnU-Net's fp16 path relies on the GradScaler, which silently skips steps with Inf gradients and halves the
loss scale forever when every loss is NaN (e.g. NaN voxels in an image); with bf16 or fp32 there is no
scaler, and one NaN gradient is written into every weight by the optimiser. Here a step whose loss (or,
without a scaler, gradient norm) is not finite is skipped, counted, and `patience` such steps in a row stop
the run with a message naming the likely causes. Everything else is nnU-Net's step: backward, gradient
clipping at norm 12, GradScaler when present.

A skipped step leaves the model as it was before its forward pass: weights, optimiser state and the
BatchNorm running statistics, which the forward pass of a NaN batch would otherwise turn into NaN for good
(training uses batch statistics, so it would go on with finite losses while every later prediction is NaN).

Two phases, so that the step does not wait for the device: `backward_and_step` launches the work, `settle`
(called once the trainer has read the loss, nnU-Net's one wait per step) says whether the step was applied.
With a fused optimiser (DANIETrainer's AdamW) and no GradScaler, the skip is decided on the device: the
optimiser gets the verdict as `found_inf`, the tensor GradScaler hands fused optimisers, and a step with
found_inf == 1 leaves weights, moments and step counts untouched. The backward pass always runs then, and
the trainer's step reads nothing from the device before its loss. Otherwise (fp16 GradScaler, a non-fused
optimiser) the loss is checked on the host before the backward pass, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

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


def decides_on_device(optimizer: torch.optim.Optimizer, grad_scaler: Optional[torch.amp.GradScaler]) -> bool:
    """Whether the step's skip can be decided on the device: a fused optimiser (it takes GradScaler's found_inf,
    torch's `_step_supports_amp_scaling`) and no GradScaler, which would pass its own found_inf. Every parameter
    group must still be fused: loading a checkpoint of a non-fused optimiser (an older CPU run resumed with --c)
    brings its groups' `fused: False` along, and such a step would refuse found_inf."""
    return (grad_scaler is None and bool(getattr(optimizer, "_step_supports_amp_scaling", False))
            and all(group.get("fused") for group in optimizer.param_groups))


@dataclass
class _Verdict:
    """A step's outcome: `bad` is a device flag (1.0: skipped) until `settle` reads it; `reason` is the host's."""
    applied: Optional[bool] = None
    reason: str = ""
    bad: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    norm: Optional[torch.Tensor] = None
    optimizer: Optional[torch.optim.Optimizer] = None


class NonFiniteStepGuard:
    """Counts skipped steps; raises NonFiniteLossError after `patience` consecutive ones."""

    def __init__(self, patience: int = 10, max_grad_norm: float = 12.0):
        self.patience, self.max_grad_norm = patience, max_grad_norm
        self.consecutive = 0  # skipped steps in a row
        self.skipped = 0  # skipped steps in total
        self.last_reason = ""
        self._verdict: Optional[_Verdict] = None
        self._network: Optional[torch.nn.Module] = None
        self._norms: List[torch.nn.modules.batchnorm._BatchNorm] = []
        self._buffers: List[torch.Tensor] = []
        self._saved: List[torch.Tensor] = []

    def keep_running_statistics(self, network: torch.nn.Module) -> None:
        """Copies the BatchNorm running statistics (and counters) of `network`; call before the step's forward
        pass. A skipped step puts them back. One fused copy on the device, no wait."""
        if network is not self._network:  # the module walk takes a millisecond: once per network
            self._network = network
            self._norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        buffers = [b for m in self._norms for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                   if b is not None]  # each step: .to() or load_state_dict(assign=True) may have replaced them
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            self._buffers, self._saved = buffers, [torch.empty_like(b) for b in buffers]
        if buffers:
            torch._foreach_copy_(self._saved, buffers)

    def backward_and_step(self, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter],
                          optimizer: torch.optim.Optimizer, grad_scaler: Optional[torch.amp.GradScaler] = None,
                          ddp: bool = False, after_backward: Optional[Callable[[], None]] = None) -> None:
        """nnU-Net's backward + clip + step; `settle()` then says whether the step was applied. `after_backward`
        runs right after the backward pass, before clipping (e.g. gradients of low-precision weight copies
        widened into the parameters': danie_nnunet/weight_cast.py)."""
        parameters = list(parameters)
        after_backward = after_backward or (lambda: None)
        if decides_on_device(optimizer, grad_scaler):
            self._verdict = self._step_deciding_on_device(loss, parameters, optimizer, ddp, after_backward)
            return
        if not _finite_on_every_rank(loss, ddp):
            # no backward: nothing reaches the weights, the optimiser state or the GradScaler's loss scale
            self._verdict = _Verdict(False, f"the loss is {loss.detach().float().item()}")
            return
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            after_backward()
            grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            grad_scaler.step(optimizer)  # skips steps with Inf gradients itself (routine fp16 loss scaling)
            grad_scaler.update()
        else:
            loss.backward()
            after_backward()
            # gradients are all-reduced by DDP before this point, so every rank sees the same norm
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            if not torch.isfinite(norm):
                optimizer.zero_grad(set_to_none=True)
                self._verdict = _Verdict(False, self._norm_reason(norm, loss))
                return
            optimizer.step()
        self._verdict = _Verdict(True)

    def _step_deciding_on_device(self, loss: torch.Tensor, parameters: List[torch.nn.Parameter],
                                 optimizer: torch.optim.Optimizer, ddp: bool,
                                 after_backward: Callable[[], None]) -> _Verdict:
        loss.backward()  # a NaN loss gives NaN gradients, which the skipped step never applies
        after_backward()
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        bad = torch.logical_not(torch.isfinite(loss.detach()).all() & torch.isfinite(norm)).to(torch.float32)
        if ddp:  # DDP ranks must agree; an all-reduce is queued on the device like the rest
            bad = bad.reshape(1)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            bad = bad.reshape(())
        optimizer.found_inf = bad
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return _Verdict(bad=bad, loss=loss.detach(), norm=norm.detach(), optimizer=optimizer)

    @staticmethod
    def _norm_reason(norm: torch.Tensor, loss: torch.Tensor) -> str:
        return f"the gradient norm is {norm.item()} (loss {loss.detach().float().item():.4g})"

    def settle(self) -> bool:
        """Whether the step of the last `backward_and_step` was applied. A skipped one is counted, its BatchNorm
        running statistics are put back, and `patience` in a row raise NonFiniteLossError. Reads the device's
        verdict: call it once the step's loss has been read, so that it does not wait."""
        verdict, self._verdict = self._verdict, None
        if verdict is None:
            raise RuntimeError("NonFiniteStepGuard.settle() needs a backward_and_step() before it")
        if verdict.bad is not None:
            verdict.applied = not bool(verdict.bad.item())
            if not verdict.applied:
                finite_loss = bool(torch.isfinite(verdict.loss).all())
                verdict.reason = self._norm_reason(verdict.norm, verdict.loss) if finite_loss \
                    else f"the loss is {verdict.loss.float().item()}"
                verdict.optimizer.zero_grad(set_to_none=True)
        if verdict.applied:
            self.consecutive = 0
            return True
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._saved)
        return self._skip(verdict.reason)

    def _skip(self, reason: str) -> bool:
        self.consecutive += 1
        self.skipped += 1
        self.last_reason = reason
        if self.consecutive >= self.patience:
            raise NonFiniteLossError(
                f"DANIE stopped training: {self.consecutive} training steps in a row were skipped because "
                f"{reason}; weights were not updated by them. {LIKELY_CAUSES}")
        return False
