"""EpochTiming (trainers/epoch_timing.py): each epoch's time split into steps, waits for batches and the rest."""
import pytest

from danie_nnunet.trainers import epoch_timing
from danie_nnunet.trainers.epoch_timing import EpochTiming


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Logger:
    def __init__(self, clock):
        self.clock, self.starts = clock, []

    def get_value(self, key, step):
        assert key == "epoch_start_timestamps"
        return self.starts[step]


class _nnUNetLoop:
    """nnU-Net's run_training for one epoch, with each phase taking scripted seconds on a fake clock."""

    def __init__(self, clock):
        self.clock, self.logger, self.lines = clock, _Logger(clock), []

    def on_epoch_start(self):
        self.logger.starts.append(self.clock())

    def on_train_epoch_start(self):
        self.clock.now += 0.25  # learning rate, logging

    def train_step(self, batch):
        self.clock.now += batch["step_s"]
        return {"loss": 0.0}

    def on_validation_epoch_start(self):
        self.clock.now += 0.5

    def validation_step(self, batch):
        self.clock.now += batch["step_s"]
        return {"loss": 0.0}

    def on_epoch_end(self):
        self.lines.append("nnU-Net's epoch end")

    def print_to_log_file(self, *args, also_print_to_console=True):
        self.lines.append(" ".join(str(a) for a in args))

    def run_epoch(self, train_waits, val_waits, step_s=0.125):
        self.on_epoch_start()
        self.on_train_epoch_start()
        for wait in train_waits:
            self.clock.now += wait  # next(self.dataloader_train)
            self.train_step({"step_s": step_s})
        self.clock.now += 1.0  # on_train_epoch_end
        self.on_validation_epoch_start()
        for wait in val_waits:
            self.clock.now += wait
            self.validation_step({"step_s": step_s / 2})
        self.clock.now += 2.0  # on_validation_epoch_end
        self.on_epoch_end()


class _TimedLoop(EpochTiming, _nnUNetLoop):
    pass


@pytest.fixture
def clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(epoch_timing, "perf_counter", clock)
    monkeypatch.setattr(epoch_timing, "time", clock)
    return clock


def test_an_epoch_is_split_into_steps_batch_waits_and_the_rest(clock):
    loop = _TimedLoop(clock)
    loop.run_epoch(train_waits=[0.5, 0.0, 0.25], val_waits=[0.0, 0.125])
    line, end = loop.lines
    assert end == "nnU-Net's epoch end"  # nnU-Net's own on_epoch_end still runs, after the line
    # 0.25 + 0.75 waits + 3 x 0.125 steps + 1.0 + 0.5 + 0.125 waits + 2 x 0.0625 steps + 2.0 = 5.125 s
    assert line == ("Epoch time by part: training 3 steps 0.38 s (125.0 ms each), waiting for batches 0.75 s; "
                    "validation 2 steps 0.12 s (62.5 ms each), waiting for batches 0.12 s; the rest 3.75 s "
                    "(of 5.12 s)")


def test_each_epoch_starts_counting_afresh(clock):
    loop = _TimedLoop(clock)
    loop.run_epoch(train_waits=[1.0], val_waits=[])
    loop.run_epoch(train_waits=[0.0, 0.0], val_waits=[0.0])
    second = loop.lines[2]
    assert second.startswith("Epoch time by part: training 2 steps 0.25 s (125.0 ms each), waiting for batches "
                             "0.00 s; validation 1 step 0.06 s (62.5 ms each), waiting for batches 0.00 s;")


def test_a_step_outside_nnunets_loop_and_a_failing_step_are_still_counted(clock):
    loop = _TimedLoop(clock)
    loop.train_step({"step_s": 0.5})  # no on_train_epoch_start, as tests call train_step
    with pytest.raises(KeyError):
        loop.train_step({})  # a step that raises is counted and re-raised
    times = loop._epoch_times().train
    assert (times.steps, times.step_s) == (2, 0.5)
