"""Benchmark trainers for bench/gpu_checks.sh e2e: 2 epochs of $DANIE_BENCH_ITERATIONS (default 100) iterations;
the second epoch is the one timed (the first pays torch.compile and the data loader start)."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from danie_nnunet.trainers import DANIETrainer

ITERATIONS = int(os.environ.get("DANIE_BENCH_ITERATIONS", "100"))


class nnUNetTrainer_bench(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, ITERATIONS, 10


class DANIETrainer_bench(DANIETrainer):
    epochs = 2
    iterations_per_epoch = ITERATIONS
    val_iterations_per_epoch = 10
