"""Benchmark trainers for bench/gpu_checks.sh e2e: 2 epochs of $DANIE_BENCH_ITERATIONS (default 40) iterations;
the second epoch is the one timed (the first pays the data loader start, and torch.compile where it is on). The
final validation of the fold (sliding-window prediction of the validation cases) is skipped: nnUNetv2_predict is timed
on its own."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from danie_nnunet.trainers import DANIETrainer
from danie_nnunet.trainers.epoch_timing import EpochTiming

ITERATIONS = int(os.environ.get("DANIE_BENCH_ITERATIONS", "40"))


class _NoFinalValidation:
    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("bench trainer: final validation skipped")


class nnUNetTrainer_bench(_NoFinalValidation, EpochTiming, nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, ITERATIONS, 10


class DANIETrainer_bench(_NoFinalValidation, DANIETrainer):
    epochs = 2
    iterations_per_epoch = ITERATIONS
    val_iterations_per_epoch = 10
