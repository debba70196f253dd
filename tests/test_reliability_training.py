"""Training never continues silently on NaNs, is repeatable on CPU, and refuses unusable configurations clearly."""
import copy
import os

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from danie_nnunet import create_danie
from danie_nnunet.config import DANIE_S
from danie_nnunet.trainers import DANIETrainer_S, fit_plans_to_danie
from danie_nnunet.trainers.danie_trainer import DANIEConfigurationError
from danie_nnunet.trainers.nonfinite_guard import NonFiniteLossError, NonFiniteStepGuard, decides_on_device


def tiny_model(batchnorm=False):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)) if batchnorm else torch.nn.Linear(4, 2)


def step(guard, model, optimizer, x, scaler=None):
    optimizer.zero_grad(set_to_none=True)
    guard.keep_running_statistics(model)
    loss = model(x).pow(2).mean()
    guard.backward_and_step(loss, model.parameters(), optimizer, scaler)
    return guard.settle()


# DANIETrainer's AdamW is fused: the guard's verdict stays on the device (found_inf). Non-fused: the host decides.
OPTIMIZERS = {"AdamW-fused": dict(fused=True), "AdamW-foreach": dict(foreach=True)}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("scaler", [None, "grad_scaler"], ids=["bf16-or-fp32", "fp16-GradScaler"])
def test_nonfinite_loss_is_skipped_and_repeated_ones_stop_the_run(bad, scaler, optimizer):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, **OPTIMIZERS[optimizer])
    scaler = torch.amp.GradScaler("cpu") if scaler else None
    guard = NonFiniteStepGuard(patience=3)
    good, poisoned = torch.ones(2, 4), torch.full((2, 4), bad)
    before = copy.deepcopy(model.state_dict())
    assert not step(guard, model, optimizer, poisoned, scaler)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the weights did not move
    for state in optimizer.state.values():  # nor did AdamW's moments and step counts (fused: kept at zero)
        assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
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


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_nonfinite_gradient_with_finite_loss_is_skipped_without_a_scaler(optimizer):
    """bf16/fp32 have no GradScaler: an overflow in the backward pass must not reach the weights."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, **OPTIMIZERS[optimizer])
    guard = NonFiniteStepGuard(patience=5)
    before = copy.deepcopy(model.state_dict())
    hook = model.weight.register_hook(lambda grad: grad * float("inf"))  # overflow in the backward pass
    assert not step(guard, model, optimizer, torch.ones(2, 4))
    assert "gradient norm is" in guard.last_reason and "loss" in guard.last_reason
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # no NaN gradient is left behind
    hook.remove()
    assert step(guard, model, optimizer, torch.ones(2, 4)) and guard.consecutive == 0
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("scaler", [None, "grad_scaler"], ids=["bf16-or-fp32", "fp16-GradScaler"])
def test_a_skipped_step_leaves_no_trace_not_even_in_batchnorm_statistics(optimizer, scaler):
    """The forward pass of a NaN batch writes NaN into BatchNorm's running statistics. Training would go on (it
    normalises with batch statistics), but every later prediction would be NaN: a skipped step puts them back.
    A run with a skipped step in it is the run without it, to the bit."""
    batches = [torch.randn(4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    poisoned = batches[0].clone()
    poisoned[1, 2] = float("nan")
    runs = []
    for sequence in ([0, 1, 2], [0, "nan", 1, "nan", 2]):
        model = tiny_model(batchnorm=True)
        adamw = torch.optim.AdamW(model.parameters(), lr=1e-2, **OPTIMIZERS[optimizer])
        guard = NonFiniteStepGuard(patience=3)
        grad_scaler = torch.amp.GradScaler("cpu") if scaler else None
        applied = [step(guard, model, adamw, poisoned if i == "nan" else batches[i], grad_scaler)
                   for i in sequence]
        assert applied == [i != "nan" for i in sequence]
        runs.append((model.state_dict(), adamw.state_dict()["state"]))
    (weights, moments), (weights_skipped, moments_skipped) = runs
    assert weights.keys() == weights_skipped.keys() and "1.running_mean" in weights
    for name in weights:
        assert torch.equal(weights[name], weights_skipped[name]), name
    for index in moments:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(torch.as_tensor(moments[index][key]), torch.as_tensor(moments_skipped[index][key]))


def test_running_statistics_replaced_between_steps_are_the_ones_put_back():
    """The guard walks the network's modules once, but reads their buffers every step: `.to(device)` or
    `load_state_dict(assign=True)` puts new tensors in place of the old ones."""
    model = tiny_model(batchnorm=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    guard = NonFiniteStepGuard()
    assert step(guard, model, optimizer, torch.ones(3, 4))
    model[1].running_mean = model[1].running_mean.clone()  # a new tensor in the same place
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not step(guard, model, optimizer, torch.full((3, 4), float("nan")))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_with_a_fused_optimiser_the_step_reads_nothing_from_the_device(monkeypatch):
    """DANIETrainer's step (fused AdamW, no GradScaler) queues backward, clipping, the skip decision and the update
    without reading a value back: the host never waits for the device before the trainer reads the loss."""
    model = tiny_model(batchnorm=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    guard = NonFiniteStepGuard(patience=3)
    for x, expect in ((torch.ones(3, 4), True), (torch.full((3, 4), float("nan")), False)):
        optimizer.zero_grad(set_to_none=True)
        with monkeypatch.context() as reads:
            for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
                reads.setattr(torch.Tensor, name, lambda *a, _name=name, **k: pytest.fail(f"read back: .{_name}"))
            guard.keep_running_statistics(model)
            loss = model(x).pow(2).mean()
            guard.backward_and_step(loss, model.parameters(), optimizer)
        assert guard.settle() is expect


def test_a_checkpoint_of_a_non_fused_optimiser_resumes_with_the_host_decision():
    """nnUNetv2_train --c of a run from before the trainer's AdamW was fused on a CPU: the loaded groups say
    `fused: False`, so the guard decides on the host (found_inf would be refused by a non-fused step)."""
    model = tiny_model()
    old = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    step(NonFiniteStepGuard(), model, old, torch.ones(2, 4))
    resumed = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    assert decides_on_device(resumed, None)
    resumed.load_state_dict(old.state_dict())
    assert not decides_on_device(resumed, None)
    guard = NonFiniteStepGuard()
    assert not step(guard, model, resumed, torch.full((2, 4), float("nan")))
    assert step(guard, model, resumed, torch.ones(2, 4))


def test_settle_needs_a_step_before_it():
    with pytest.raises(RuntimeError, match="backward_and_step"):
        NonFiniteStepGuard().settle()


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
    assert decides_on_device(trainer.optimizer, trainer.grad_scaler)  # fused AdamW: the GPU's path on a CPU too
    before = [p.detach().clone() for p in trainer.network.parameters()]
    statistics = {k: v.clone() for k, v in trainer.network.state_dict().items() if "running" in k}
    assert np.isnan(trainer.train_step(batch)["loss"])
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))
    assert len(statistics) > 100  # DANIE-S's BatchNorms, put back after the NaN forward pass
    assert all(torch.equal(v, trainer.network.state_dict()[k]) for k, v in statistics.items())
    assert "training step skipped, the loss is nan (1 in a row; the run stops at 2)" in capsys.readouterr().out
    with pytest.raises(NonFiniteLossError, match="NaN or Inf voxels in the training images"):
        trainer.train_step(batch)
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))
    assert "DANIE stopped training: 2 training steps in a row" in open(trainer.log_file).read()
    assert len(steps_begun) == 2


@pytest.mark.e2e
def test_the_loader_sends_one_target_and_every_head_reads_it_on_the_device(nnunet_folders, monkeypatch):
    """y and the four heads are at full resolution: nnU-Net's loader sends the segmentation once (not five copies),
    and the training and validation steps give the five outputs the same device tensor, with the loss and the
    validation counts of five separate copies."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # nnU-Net's single-threaded loader, in this process
    trainer = make_trainer(*nnunet_folders)
    loaders = trainer.get_dataloaders()
    train_batch, val_batch = (next(loader) for loader in loaders)
    for batch in (train_batch, val_batch):
        assert isinstance(batch["target"], torch.Tensor), type(batch["target"])
        assert batch["target"].shape[0] == batch["data"].shape[0] and batch["target"].shape[1] == 1
    heads = trainer._targets_on_device(train_batch["target"])
    assert len(heads) == 5 and all(h is heads[0] for h in heads)
    trainer.network.eval()  # BatchNorm statistics fixed: both forms see the same network
    with torch.no_grad():
        output = trainer.network(train_batch["data"])
        shared, copies = trainer.loss(output, heads), trainer.loss(output, [t.clone() for t in heads])
    assert torch.equal(shared, copies) and torch.isfinite(shared)
    ours = trainer.validation_step(val_batch)
    nnunet = nnUNetTrainer.validation_step(trainer, dict(val_batch, target=[val_batch["target"].clone()] * 5))
    assert ours.keys() == nnunet.keys() and np.isfinite(ours["loss"])
    for key in ours:
        assert np.array_equal(ours[key], nnunet[key]), key
    trainer.enable_deep_supervision = False  # a trainer without deep supervision: the one target stays one tensor
    assert isinstance(trainer._targets_on_device(train_batch["target"]), torch.Tensor)


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


@pytest.mark.e2e
def test_weight_copies_train_as_autocast_does_to_the_bit(nnunet_folders, monkeypatch):
    """DANIE_cast_weights_once in nnU-Net's trainer, a CPU's bf16 autocast standing in for a card's: the same losses
    and weights as with autocast's own casts, over two steps and a skipped NaN step, and the same checkpoint keys."""
    monkeypatch.setattr(DANIETrainer_S, "_autocast_dtype", lambda self: torch.bfloat16)
    runs = {}
    for env in ("f", "t"):
        monkeypatch.setenv("DANIE_cast_weights_once", env)
        trainer = make_trainer(*nnunet_folders)
        data = list(batches(trainer, 3))
        data[2]["data"][0, 0, 5, 5] = float("nan")
        losses = [float(trainer.train_step(b)["loss"]) for b in data]
        runs[env] = losses, trainer.network.state_dict(), trainer
    (plain_losses, plain_state, _), (losses, state, trainer) = runs["f"], runs["t"]
    assert np.array_equal(plain_losses, losses, equal_nan=True) and np.isnan(losses[2])
    assert list(plain_state) == list(state)
    assert all(torch.equal(plain_state[k], state[k]) for k in state)
    assert trainer.nonfinite_guard.skipped == 1 and len(trainer.weight_copies) > 300
    assert "copied to bfloat16 once per step" in open(trainer.log_file).read()
    assert runs["f"][2].weight_copies is None
