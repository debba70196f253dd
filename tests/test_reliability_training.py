"""Training never continues silently on NaNs, is repeatable on CPU, and refuses unusable configurations clearly."""
import copy
import os

import numpy as np
import pytest
import torch

from danie_nnunet import create_danie
from danie_nnunet.config import DANIE_S
from danie_nnunet.trainers import DANIETrainer_S, fit_plans_to_danie
from danie_nnunet.trainers.danie_trainer import DANIEConfigurationError
from danie_nnunet.trainers.nonfinite_guard import NonFiniteLossError, NonFiniteStepGuard


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def step(guard, model, optimizer, x, scaler=None):
    optimizer.zero_grad(set_to_none=True)
    loss = model(x).pow(2).mean()
    return guard.backward_and_step(loss, model.parameters(), optimizer, scaler)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("scaler", [None, "grad_scaler"], ids=["bf16-or-fp32", "fp16-GradScaler"])
def test_nonfinite_loss_is_skipped_and_repeated_ones_stop_the_run(bad, scaler):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu") if scaler else None
    guard = NonFiniteStepGuard(patience=3)
    good, poisoned = torch.ones(2, 4), torch.full((2, 4), bad)
    before = copy.deepcopy(model.state_dict())
    assert not step(guard, model, optimizer, poisoned, scaler)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the weights did not move
    assert not optimizer.state  # nor did AdamW's moments
    assert guard.consecutive == 1 and "the loss is" in guard.last_reason
    assert step(guard, model, optimizer, good, scaler)  # a good step resets the count
    assert guard.consecutive == 0 and guard.skipped == 1
    assert not step(guard, model, optimizer, poisoned, scaler)
    assert not step(guard, model, optimizer, poisoned, scaler)
    with pytest.raises(NonFiniteLossError) as stop:
        step(guard, model, optimizer, poisoned, scaler)
    message = str(stop.value)
    assert "3 training steps in a row" in message
    for cause in ("NaN or Inf voxels", "learning rate", "fp16 overflow", "--c"):
        assert cause in message
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_gradient_with_finite_loss_is_skipped_without_a_scaler():
    """bf16/fp32 have no GradScaler: an overflow in the backward pass must not reach the weights."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    guard = NonFiniteStepGuard(patience=5)
    before = copy.deepcopy(model.state_dict())
    hook = model.weight.register_hook(lambda grad: grad * float("inf"))  # overflow in the backward pass
    assert not step(guard, model, optimizer, torch.ones(2, 4))
    assert "gradient norm is" in guard.last_reason
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    hook.remove()
    assert step(guard, model, optimizer, torch.ones(2, 4)) and guard.consecutive == 0
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture
def nnunet_folders(trained, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, trained["env"][var])
    from batchgenerators.utilities.file_and_folder_operations import load_json
    plans = load_json(os.path.join(trained["preprocessed"], "nnUNetPlans.json"))
    plans["continue_training"] = False
    return plans, load_json(os.path.join(trained["preprocessed"], "dataset.json"))


def make_trainer(plans, dataset_json, seed=0):
    trainer = DANIETrainer_S(plans=copy.deepcopy(plans), configuration="2d", fold=2, dataset_json=dataset_json,
                             device=torch.device("cpu"))
    torch.manual_seed(seed)
    trainer.initialize()
    trainer.set_deep_supervision_enabled(True)
    trainer.network.train()
    return trainer


def batches(trainer, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    for _ in range(n):
        data = torch.randn(2, 1, *patch, generator=generator)
        target = torch.randint(0, 6, (2, 1, *patch), generator=generator).float()
        yield {"data": data, "target": [target] * 5}


@pytest.mark.e2e
def test_trainer_skips_nan_steps_logs_them_and_stops(nnunet_folders, capsys, monkeypatch):
    steps_begun = []  # each step starts a new CUDA-graph-tree iteration, also after a skipped backward
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps_begun.append(1))
    trainer = make_trainer(*nnunet_folders)
    trainer.marks_cudagraph_steps = True  # as DANIE_compile_mode=reduce-overhead sets it (not on a CPU)
    trainer.nonfinite_guard.patience = 2
    batch = next(batches(trainer, 1))
    batch["data"][0, 0, 5, 5] = float("nan")  # one NaN voxel makes the whole loss NaN
    before = [p.detach().clone() for p in trainer.network.parameters()]
    assert np.isnan(trainer.train_step(batch)["loss"])
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))
    assert "training step skipped, the loss is nan (1 in a row; the run stops at 2)" in capsys.readouterr().out
    with pytest.raises(NonFiniteLossError, match="NaN or Inf voxels in the training images"):
        trainer.train_step(batch)
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))
    assert "DANIE stopped training: 2 training steps in a row" in open(trainer.log_file).read()
    assert len(steps_begun) == 2


@pytest.mark.e2e
def test_same_seed_and_data_give_identical_losses_on_cpu(nnunet_folders):
    def losses(seed, steps=2):
        trainer = make_trainer(*nnunet_folders, seed=seed)
        return [float(trainer.train_step(b)["loss"]) for b in batches(trainer, steps)]

    first = losses(0)
    assert first == losses(0)  # bitwise: same initial weights, same steps
    assert first[0] != losses(1, steps=1)[0]  # and the seed matters (the comparison is not vacuous)


@pytest.mark.e2e
def test_dataset_json_without_labels_or_channels_is_refused_before_nnunet(nnunet_folders):
    plans, dataset_json = nnunet_folders
    no_labels = {k: v for k, v in dataset_json.items() if k != "labels"}
    with pytest.raises(DANIEConfigurationError, match='no "labels": add e.g.'):
        DANIETrainer_S(plans=copy.deepcopy(plans), configuration="2d", fold=2, dataset_json=no_labels,
                       device=torch.device("cpu"))
    with pytest.raises(DANIEConfigurationError, match="no input channels"):
        DANIETrainer_S(plans=copy.deepcopy(plans), configuration="2d", fold=2,
                       dataset_json=dict(dataset_json, channel_names={}), device=torch.device("cpu"))
    gap = dict(dataset_json, labels={"background": 0, "liver": 1, "aorta": 5})
    with pytest.raises(DANIEConfigurationError, match="without gaps"):
        DANIETrainer_S(plans=copy.deepcopy(plans), configuration="2d", fold=2, dataset_json=gap,
                       device=torch.device("cpu"))


@pytest.mark.e2e
@pytest.mark.parametrize("patch", [[0, 64], [-32, 64], [64.5, 64]])
def test_patch_size_that_no_network_can_take_is_refused(nnunet_folders, patch):
    plans, _ = nnunet_folders
    plans = copy.deepcopy(plans)
    plans["configurations"]["2d"]["patch_size"] = patch
    with pytest.raises(DANIEConfigurationError, match="must be a positive integer"):
        fit_plans_to_danie(plans, "2d", DANIE_S)


@pytest.mark.e2e
def test_patch_size_not_a_multiple_of_32_is_rounded_up(nnunet_folders):
    plans, _ = nnunet_folders
    plans = copy.deepcopy(plans)
    plans["configurations"]["2d"]["patch_size"] = [1, 100]
    assert "rounded up to [32, 128]" in fit_plans_to_danie(plans, "2d", DANIE_S)


@pytest.mark.parametrize("in_chans", [2, 4])
def test_many_input_channels_go_through_the_input_adapter(in_chans):
    net = create_danie("S", (64, 64), in_chans, 3, deep_supervision=True)
    y, *heads = net(torch.randn(2, in_chans, 64, 64))
    sum(torch.nn.functional.cross_entropy(h, torch.zeros(2, 64, 64, dtype=torch.long)) for h in heads).backward()
    assert y.shape == (2, 3, 64, 64) and net.input_adapter[0].weight.grad.shape == (3, in_chans, 1, 1)
    with pytest.raises(ValueError, match=r"expects a \(B, 4, H, W\) tensor|expects a \(B, 2, H, W\) tensor"):
        net(torch.randn(1, 1, 64, 64))  # a file with fewer channels than the model: a clear error
