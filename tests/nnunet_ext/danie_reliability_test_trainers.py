"""A tiny DANIE trainer that dies like `kill -9` where the reliability tests ask it to (found via nnUNet_extTrainer)."""
import io
import os
import signal

import torch

from danie_nnunet.trainers import DANIETrainer_S


def _die():
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or `kill -9` does: no cleanup, no atexit


class DANIETrainerTestFaults(DANIETrainer_S):
    """DANIE-S, 3 epochs of 2 iterations, a checkpoint every epoch, no final validation (tested elsewhere).

    DANIE_TEST_KILL_IN_CHECKPOINT_WRITE=N: SIGKILL halfway through writing checkpoint_latest.pth after epoch N
    (half of the bytes are on disk). DANIE_TEST_KILL_IN_EPOCH=N: SIGKILL in the second training step of epoch N.
    """

    epochs = 3
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1
        self.steps_this_epoch = 0

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, None

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
