"""DANIE trainer variants, one idea each, named for what they change (as nnU-Net's own variants)."""
from __future__ import annotations

from .danie_trainer import DANIETrainer


class DANIETrainer_S(DANIETrainer):
    """DANIE-S: MaxViT-tiny SAP stream, dims 64-512."""

    danie_variant = "S"


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


class DANIETrainer_S_4epochs_25it(DANIETrainer_S):
    """The CPU demo: 4 epochs of 25 iterations (5 validation iterations), a few minutes on 2 cores."""

    epochs = 4
    iterations_per_epoch = 25
    val_iterations_per_epoch = 5
