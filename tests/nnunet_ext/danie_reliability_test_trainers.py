"""A tiny DANIE trainer that dies like `kill -9` where the reliability tests ask it to (found via nnUNet_extTrainer)."""
import io
import os
import signal

import torch
from danie_test_trainers import DANIETrainerTest  # this folder is on sys.path while nnU-Net looks trainers up


def _die():
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or `kill -9` does: no cleanup, no atexit


class DANIETrainerTestFaults(DANIETrainerTest):
    """DANIETrainerTest for 3 epochs (2 iterations each, a checkpoint every epoch, no mirroring), no final
    validation (tested elsewhere).

    DANIE_TEST_KILL_IN_CHECKPOINT_WRITE=N: SIGKILL halfway through writing checkpoint_latest.pth after epoch N
    (half of the bytes are on disk). DANIE_TEST_KILL_IN_EPOCH=N: SIGKILL in the second training step of epoch N.
    """

    epochs = 3
    steps_this_epoch = 0

    def on_train_epoch_start(self):
        self.steps_this_epoch = 0
        super().on_train_epoch_start()

    def train_step(self, batch):
        if os.environ.get("DANIE_TEST_KILL_IN_EPOCH") == str(self.current_epoch) and self.steps_this_epoch == 1:
            _die()
        self.steps_this_epoch += 1
        return super().train_step(batch)

    def save_checkpoint(self, filename):
        if (os.environ.get("DANIE_TEST_KILL_IN_CHECKPOINT_WRITE") == str(self.current_epoch)
                and os.path.basename(filename) == "checkpoint_latest.pth"):
            real_save = torch.save

            def save_half_then_die(obj, f, *args, **kwargs):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                with open(f, "wb") as out:
                    out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                _die()

            torch.save = save_half_then_die  # nnU-Net's save_checkpoint calls torch.save(checkpoint, name)
        super().save_checkpoint(filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (DANIETrainerTestFaults)")
