"""Where an nnU-Net epoch's time goes: a line in the training log after nnU-Net's own "Epoch time".

nnU-Net logs one number per epoch. Issue 4 asked how much of it is data loading, and a subtraction (epoch minus
iterations x the bench's step) left 1.7 s of DANIE-L's 8.4 s epoch unexplained on an H100. `EpochTiming` measures it
instead, with no device synchronisation of its own:

- a training or validation step's time ends when nnU-Net's step returns, and each step ends by copying its loss
  (validation: its Dice counts) to the host, which waits for all the device work queued before it;
- the time between two steps is the wait for the next batch: nnU-Net's loop only calls `next(dataloader)` there
  (the first step of a phase waits from the phase's start);
- the rest is nnU-Net's epoch bookkeeping: learning rate, loss aggregation (all-gathered under DDP), online Dice.

A mix-in for any nnUNetTrainer: `class MyTrainer(EpochTiming, nnUNetTrainer)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter, time
from typing import Callable


@dataclass
class PhaseTimes:
    """Seconds spent in one phase's steps and waiting for its batches."""
    steps: int = 0
    step_s: float = 0.0
    wait_s: float = 0.0

    def describe(self, name: str) -> str:
        each = f" ({1e3 * self.step_s / self.steps:.1f} ms each)" if self.steps else ""
        steps = f"{self.steps} step" + ("" if self.steps == 1 else "s")
        return f"{name} {steps} {self.step_s:.2f} s{each}, waiting for batches {self.wait_s:.2f} s"


@dataclass
class EpochTimes:
    train: PhaseTimes
    validation: PhaseTimes

    def describe(self, epoch_s: float) -> str:
        rest = epoch_s - sum(p.step_s + p.wait_s for p in (self.train, self.validation))
        return (f"Epoch time by part: {self.train.describe('training')}; "
                f"{self.validation.describe('validation')}; the rest {rest:.2f} s (of {epoch_s:.2f} s)")


class EpochTiming:
    """Logs, after each epoch, its training and validation steps' time and the waits for their batches."""

    def _start_epoch_times(self) -> EpochTimes:
        self._epoch_timing = EpochTimes(PhaseTimes(), PhaseTimes())
        self._phase_start = perf_counter()
        return self._epoch_timing

    def _epoch_times(self) -> EpochTimes:
        if getattr(self, "_epoch_timing", None) is None:  # a step run outside nnU-Net's loop, e.g. by a test
            return self._start_epoch_times()
        return self._epoch_timing

    def timed_step(self, phase: str, step: Callable[[dict], dict], batch: dict) -> dict:
        """step(batch), counted as a step of `phase` ('train' or 'validation'); for a trainer that replaces
        nnU-Net's train_step instead of extending it (DANIETrainer)."""
        times = getattr(self._epoch_times(), phase)
        start = perf_counter()
        times.wait_s += start - self._phase_start
        try:
            return step(batch)
        finally:
            self._phase_start = perf_counter()
            times.steps += 1
            times.step_s += self._phase_start - start

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._start_epoch_times()

    def train_step(self, batch: dict) -> dict:
        return self.timed_step("train", super().train_step, batch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._epoch_times()
        self._phase_start = perf_counter()

    def validation_step(self, batch: dict) -> dict:
        return self.timed_step("validation", super().validation_step, batch)

    def on_epoch_end(self):
        # nnU-Net's "Epoch time" runs from on_epoch_start to the start of on_epoch_end, as this does
        epoch_s = time() - self.logger.get_value("epoch_start_timestamps", step=-1)
        self.print_to_log_file(self._epoch_times().describe(epoch_s), also_print_to_console=False)
        super().on_epoch_end()
