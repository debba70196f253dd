"""DANIE trainer variants, one idea each, named for what they change (as nnU-Net's own variants)."""
from __future__ import annotations

import random

import numpy as np
import torch

from .danie_trainer import DANIETrainer


class DANIETrainer_S(DANIETrainer):
    """DANIE-S: MaxViT-tiny SAP stream, dims 64-512."""

    danie_variant = "S"


class DANIETrainer_recompute(DANIETrainer):
    """Recomputes the first three MaxViT stages, the HAP stem and the first HAP stage in the backward pass
    (danie_nnunet/recompute.py): the same function in about half the training memory, for some extra compute
    (docs/performance.md). For cards where the planned batch of DANIE-L does not fit."""

    recompute = True


class DANIETrainer_S_recompute(DANIETrainer_S):
    recompute = True


class DANIETrainer_5epochs(DANIETrainer):
    epochs = 5


class DANIETrainer_50epochs(DANIETrainer):
    epochs = 50


class DANIETrainer_250epochs(DANIETrainer):
    epochs = 250


class DANIETrainer_S_5epochs(DANIETrainer_S):
    epochs = 5


class DANIETrainer_S_50epochs(DANIETrainer_S):
    epochs = 50


class DANIETrainer_S_250epochs(DANIETrainer_S):
    epochs = 250


class SeededTraining:
    """Mixin for a trainer that seeds Python's, NumPy's and torch's generators before nnU-Net sets up (initial
    weights, patch sampling, augmentation): with the augmentation in the training process (nnUNet_n_proc_DA=0) every
    run, and every resumed run from the same checkpoint, trains the same network on a given machine."""

    seed = 0

    def initialize(self):
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        super().initialize()


class DANIETrainer_S_4epochs_25it(SeededTraining, DANIETrainer_S):
    """The CPU demo: 4 epochs of 25 iterations (5 validation iterations), a few minutes on 2 cores. Seeded, since
    the demo runs nnU-Net's augmentation in the training process on a CPU: unseeded, about one demo in fifteen
    learned only two of the five organs in its 100 iterations."""

    epochs = 4
    iterations_per_epoch = 25
    val_iterations_per_epoch = 5
