"""The CPU demo trains the same network on every run: its trainer seeds, and the demo keeps nnU-Net's augmentation
in the training process, where the seed reaches it (an unseeded demo once learned two of its five organs)."""
import random

import numpy as np
import pytest
import torch

from danie_nnunet import demo
from danie_nnunet.trainers import DANIETrainer_S
from danie_nnunet.trainers.variants import DANIETrainer_S_4epochs_25it


def test_the_cpu_demo_trainer_seeds_before_nnunet_sets_up(monkeypatch):
    drawn = []
    monkeypatch.setattr(DANIETrainer_S, "initialize",
                        lambda self: drawn.append((torch.randn(3), np.random.rand(), random.random())))
    trainer = DANIETrainer_S_4epochs_25it.__new__(DANIETrainer_S_4epochs_25it)
    for _ in range(2):
        torch.randn(5), np.random.rand(), random.random()  # whatever ran before
        trainer.initialize()
    assert torch.equal(drawn[0][0], drawn[1][0]) and drawn[0][1:] == drawn[1][1:]


class _Stop(Exception):
    pass


def test_the_cpu_demo_augments_in_the_training_process_only(monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    envs = {}

    def run(args, env, log_file=None):
        envs[args[0]] = env
        if args[0] == "nnUNetv2_train":
            raise _Stop
        return 0.0

    monkeypatch.setattr(demo, "run_command", run)
    with pytest.raises(_Stop):
        demo.run_demo(str(tmp_path / "out"), device="cpu", num_train=2)
    # nnU-Net's planner takes nnUNet_n_proc_DA as its thread count, so only training gets 0
    assert envs["nnUNetv2_train"]["nnUNet_n_proc_DA"] == "0"
    assert "nnUNet_n_proc_DA" not in envs["nnUNetv2_plan_and_preprocess"]
