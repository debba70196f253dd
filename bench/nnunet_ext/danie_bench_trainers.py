"""Benchmark trainers for bench/gpu_checks.sh e2e: 2 epochs of 100 iterations (the second epoch is timed)."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from danie_nnunet.trainers import DANIETrainer


class nnUNetTrainer_bench(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 100, 10


class DANIETrainer_bench(DANIETrainer):
    epochs = 2
    iterations_per_epoch = 100
    val_iterations_per_epoch = 10
