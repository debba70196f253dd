"""Tiny DANIE trainers for the end-to-end tests; found by nnU-Net through nnUNet_extTrainer like the real ones."""
import os

import torch

from danie_nnunet.trainers import DANIETrainer_S
from danie_nnunet.trainers.variants import SeededTraining

# nnU-Net's CPU commands compute on every core; found here (after that), a test's command computes on as many threads
# as the test (tests/nnunet_helpers.nnunet passes them: one per pytest-xdist worker). Two threads beside the other
# worker's made a one-iteration training about 15 % slower than one thread (2 cores, measured).
if os.environ.get("DANIE_TEST_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["DANIE_TEST_TORCH_THREADS"]))


class DANIETrainerTest(SeededTraining, DANIETrainer_S):
    """DANIE-S, 2 epochs of 2 iterations, a checkpoint every epoch; no test-time mirroring (4x faster). Seeded: the
    tests that read its trained model (tests/conftest.py's `trained`) meet the same model every run, not a draw of
    four iterations that now and then gave Grad-CAM no positive evidence anywhere (tests/test_cam.py)."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, None

    def on_train_epoch_start(self):
        # DANIE_TEST_KILL_AT_EPOCH=N: die like `kill -9` when epoch N starts (the checkpoint of N-1 is written)
        if os.environ.get("DANIE_TEST_KILL_AT_EPOCH") == str(self.current_epoch):
            os._exit(137)
        super().on_train_epoch_start()


class DANIETrainerTestOneIteration(DANIETrainerTest):
    """One epoch of one iteration: checks that a configuration trains and predicts, cheaply."""

    epochs = 1
    iterations_per_epoch = 1
    val_iterations_per_epoch = 1
