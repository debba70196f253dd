"""DANIETrainer's speed settings (issue 4): torch.compile as nnU-Net decides it (with the backward outside autocast),
an uncompiled final validation, channels-last networks, CUDA graph inference unless turned off, fused AdamW, and as
much recomputation as the planned batch needs to fit the card (or DANIE_memory_gib)."""
import os
import types

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from danie_nnunet import create_danie
from danie_nnunet.memory import estimate_training_memory
from danie_nnunet.recompute import recompute_candidates
from danie_nnunet.trainers import DANIETrainer, DANIETrainer_recompute, DANIETrainer_S, danie_trainer
from danie_nnunet.trainers.danie_trainer import (DANIEConfigurationError, compile_mode, is_compiled,
                                                 memory_budget_gib, unwrap_network)
from danie_nnunet.trainers.epoch_timing import EpochTiming


def _set_env(monkeypatch, name, value):
    """`value` None: the variable unset."""
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)


def _on_a_cuda_machine(monkeypatch, nnunet_compile):
    """nnUNet_compile set to `nnunet_compile` (None: unset), and nnU-Net's own decision as on a CUDA machine: compile
    unless nnUNet_compile is off."""
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: nnunet_compile not in ("f", "0"))
    _set_env(monkeypatch, "nnUNet_compile", nnunet_compile)


def _bare(cls):
    """A trainer object without nnU-Net's setup (which needs a preprocessed dataset): enough for one method."""
    trainer = cls.__new__(cls)
    trainer.logged, trainer.shown, trainer.is_ddp = [], [], False

    def log(*args, also_print_to_console=False, **kwargs):
        trainer.logged.append(" ".join(map(str, args)))
        trainer.shown.append(also_print_to_console)
    trainer.print_to_log_file = log
    return trainer


@pytest.mark.parametrize("env, expected", [(None, True), ("t", True), ("1", True), ("f", False), ("0", False)])
def test_compile_follows_nnunet_compile_as_nnunet_does(monkeypatch, env, expected):
    _on_a_cuda_machine(monkeypatch, env)
    assert DANIETrainer._do_i_compile(_bare(DANIETrainer)) is expected


@pytest.mark.parametrize("device, os_name, expected_line, shown", [
    ("cpu", "posix", "nnU-Net does not compile on a cpu device", False),
    ("mps", "posix", "nnU-Net does not compile on a mps device", False),
    ("cuda", "nt", "nnU-Net does not compile on Windows (no triton)", True),
    ("cuda", "posix", "nnU-Net does not compile here", True)])
def test_no_compile_where_nnunet_says_no_and_the_log_says_why(monkeypatch, device, os_name, expected_line, shown):
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: False)  # nnU-Net's rule for these machines
    monkeypatch.setattr(danie_trainer, "os", types.SimpleNamespace(name=os_name, environ=os.environ))
    monkeypatch.setenv("nnUNet_compile", "t")
    trainer = _bare(DANIETrainer)
    trainer.device = torch.device(device)
    assert DANIETrainer._do_i_compile(trainer) is False
    trainer._configure_compile()
    assert expected_line in trainer.logged[0] and "nnUNet_compile=f" not in trainer.logged[0]
    assert trainer.shown == [shown]


def test_a_misspelt_switch_is_refused_with_the_values_it_takes(monkeypatch):
    monkeypatch.setenv("nnUNet_compile", "yes")
    with pytest.raises(DANIEConfigurationError, match="nnUNet_compile='yes' is neither on"):
        DANIETrainer._do_i_compile(_bare(DANIETrainer))


@pytest.mark.parametrize("switch, attribute", [("DANIE_cuda_graphs", "cuda_graphs"),
                                               ("DANIE_mirror_batching", "mirror_batching")])
@pytest.mark.parametrize("env, expected", [(None, True), ("", True), ("t", True), ("F", False), ("0", False)])
def test_inference_speedups_are_on_unless_their_switch_turns_them_off(monkeypatch, env, expected, switch, attribute):
    _set_env(monkeypatch, switch, env)
    net = DANIETrainer_S.build_network_architecture(None, types.SimpleNamespace(patch_size=[64, 64]), 1, 3)
    assert (getattr(net, attribute) is not None) is expected


def test_networks_are_built_channels_last_and_recompute_only_in_its_variant():
    cm = types.SimpleNamespace(patch_size=[64, 64])
    net = DANIETrainer_S.build_network_architecture(None, cm, 1, 3)
    assert net.channels_last and net.sap.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(getattr(m, "_danie_recompute", False) for m in net.modules())
    assert DANIETrainer_recompute.recompute and DANIETrainer_recompute.build_network_architecture(
        None, types.SimpleNamespace(patch_size=[64, 64]), 1, 3).sap.stages_0._danie_recompute


def _recomputed(network):
    return [n for n, m in network.named_modules() if getattr(m, "_danie_recompute", False)]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("card_gib, env", [(1000.0, None), (0.5, None), (1000.0, "0.4")])
def test_recompute_switches_on_for_what_does_not_fit_the_card_or_the_asked_budget(monkeypatch, card_gib, env,
                                                                                  compiled):
    _set_env(monkeypatch, "DANIE_memory_gib", env)
    trainer = _bare(DANIETrainer_S)
    network = create_danie("S", (64, 64), 1, 3)
    trainer.network, trainer.batch_size, trainer.device = (torch.compile(network) if compiled else network), 4, \
        torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=card_gib * 2 ** 30))
    trainer._recompute_if_batch_does_not_fit()
    budget = 0.85 * card_gib if env is None else float(env)
    need = estimate_training_memory("S", (64, 64), 1, 3, compiled=compiled).total_gib(4)
    recomputed = _recomputed(network)
    assert bool(recomputed) is (need > budget)
    if need > budget:  # planned segments (tests/test_memory.py tests the plan), and the log says what they reach
        assert set(recomputed) <= set(recompute_candidates(network))
        reached = estimate_training_memory("S", (64, 64), 1, 3, recompute=recomputed).total_gib(4)  # eager plan
        assert f"about {reached:.1f} GiB" in trainer.logged[0] and f"budget {budget:.1f} GiB" in trainer.logged[0]
    assert len(trainer.logged) == (1 if need > budget or env else 0)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_compiling_trainer_plans_for_the_compiled_network(monkeypatch, compiled):
    # a budget between the compiled and the eager estimate: only the eager network needs recomputation
    eager, fast = (estimate_training_memory("S", (64, 64), 1, 3, compiled=c).total_gib(4) for c in (False, True))
    monkeypatch.setenv("DANIE_memory_gib", f"{(eager + fast) / 2:.6f}")
    trainer = _bare(DANIETrainer_S)
    network = create_danie("S", (64, 64), 1, 3)
    # the plan follows the network nnU-Net's initialize built: compiled (wrapped, not yet traced) or not
    trainer.network, trainer.batch_size, trainer.device = (torch.compile(network) if compiled else network), 4, \
        torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=2 ** 40))
    trainer._recompute_if_batch_does_not_fit()
    assert bool(_recomputed(network)) is not compiled
    assert (f"about {fast:.1f} GiB compiled, within" in trainer.logged[0]) is compiled


def test_is_compiled_sees_the_compile_wrapper_under_ddp(monkeypatch):
    network = torch.nn.Linear(2, 2)
    ddp = types.SimpleNamespace(module=torch.compile(network))  # nnU-Net compiles first, then wraps in DDP
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", types.SimpleNamespace)
    assert is_compiled(ddp) and is_compiled(ddp.module) and not is_compiled(network)
    assert not is_compiled(types.SimpleNamespace(module=network))


@pytest.mark.parametrize("env, compiled, ddp, kwargs, line", [
    ("reduce-overhead", True, False, {"mode": "reduce-overhead"}, "in Inductor's reduce-overhead setting"),
    ("max-autotune", True, False, {"mode": "max-autotune"}, "in Inductor's max-autotune setting"),
    ("combo-kernels", True, False, {"options": {"combo_kernels": True}}, "in Inductor's combo-kernels setting"),
    ("reduce-overhead", True, True, None, "ignored under DDP"),
    ("reduce-overhead", False, False, None, "ignored: the network is not compiled"),
    (None, True, False, None, None), ("default", True, False, None, None)])
def test_compile_mode_recompiles_what_nnunet_compiled(monkeypatch, env, compiled, ddp, kwargs, line):
    seen = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: seen.append(kw) or real_compile(net, backend="eager"))
    _set_env(monkeypatch, "DANIE_compile_mode", env)
    network = torch.nn.Linear(2, 2)
    trainer = _bare(DANIETrainer)
    trainer.is_ddp = ddp
    trainer.network = real_compile(network, backend="eager") if compiled else network
    before = trainer.network
    trainer._apply_compile_mode()
    assert seen == ([kwargs] if kwargs else [])
    assert trainer.marks_cudagraph_steps is (env in ("reduce-overhead", "max-autotune") and kwargs is not None)
    assert (trainer.network is before) is (kwargs is None)
    assert unwrap_network(trainer.network) is network and is_compiled(trainer.network) is compiled
    assert len(trainer.logged) == (line is not None) and all(line in logged for logged in trainer.logged)
    x = torch.randn(3, 2)
    assert torch.equal(trainer.network(x), network(x))


def test_graphs_run_without_the_cuda_graphs_asked_for_are_logged(monkeypatch):
    monkeypatch.setenv("DANIE_compile_mode", "reduce-overhead")
    monkeypatch.setattr(EpochTiming, "on_epoch_end", lambda self: None)  # nnU-Net's own needs a set-up trainer
    torch._dynamo.reset()
    trainer = _bare(DANIETrainer)
    trainer.network = torch.compile(torch.nn.Linear(3, 2))
    trainer._apply_compile_mode()
    trainer.on_epoch_end()
    assert len(trainer.logged) == 1  # nothing compiled yet
    trainer.network(torch.randn(4, 3)).sum().backward()  # a CPU has no CUDA graphs: Inductor skips them
    trainer.on_epoch_end()
    assert "compiled graph(s) ran without the CUDA graphs that DANIE_compile_mode=reduce-overhead asks for" \
        in trainer.logged[-1] and trainer.shown[-1]
    trainer.on_epoch_end()
    assert len(trainer.logged) == 2  # said once


def test_a_misspelt_compile_mode_is_refused_with_the_modes_it_takes(monkeypatch):
    monkeypatch.setenv("DANIE_compile_mode", "reduce_overhead")
    with pytest.raises(DANIEConfigurationError, match="'reduce_overhead' is not an Inductor setting: use one of "
                                                      "default, reduce-overhead, max-autotune"):
        compile_mode()
    trainer = _bare(DANIETrainer)
    trainer.network, trainer.is_ddp = torch.nn.Linear(2, 2), False
    with pytest.raises(DANIEConfigurationError):  # refused by the trainer too, compiled or not
        trainer._apply_compile_mode()


@pytest.mark.parametrize("value", ["twelve", "0", "-3", "inf", "nan"])
def test_a_memory_budget_that_is_not_a_positive_number_is_refused(monkeypatch, value):
    monkeypatch.setenv("DANIE_memory_gib", value)
    with pytest.raises(DANIEConfigurationError, match="is not a positive number of GiB"):
        memory_budget_gib()
    monkeypatch.setenv("DANIE_memory_gib", " 12.5 ")
    assert memory_budget_gib() == 12.5


def test_the_recompute_variant_keeps_its_fixed_segments(monkeypatch):
    trainer = _bare(DANIETrainer_recompute)
    trainer.network, trainer.batch_size, trainer.device = create_danie("S", (64, 64), 1, 3), 4, torch.device("cuda")
    trainer.network.set_grad_checkpointing()
    before = _recomputed(trainer.network)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=0.1 * 2 ** 30))
    trainer._recompute_if_batch_does_not_fit()
    assert _recomputed(trainer.network) == before and not trainer.logged


@pytest.mark.parametrize("device, fused", [("cuda", True), ("cpu", True), ("mps", False)])
def test_adamw_is_fused_where_torch_has_the_kernel_we_use(device, fused):
    """Fused on CUDA and on a CPU (where it steps DANIE-S 4x faster than the default), so that the NaN guard decides
    on the device there; MPS keeps torch's default."""
    trainer = _bare(DANIETrainer_S)
    trainer.network = torch.nn.Linear(2, 2)
    trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = 1e-4, 1e-4, 1
    trainer.device = torch.device(device)
    optimizer, _ = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults["fused"]) is fused


@pytest.mark.parametrize("env", [None, "t", "f"])
def test_a_compiling_trainer_traces_backward_outside_autocast(monkeypatch, env):
    _on_a_cuda_machine(monkeypatch, env)
    trainer = _bare(DANIETrainer_S)
    with torch._functorch.config.patch(backward_pass_autocast="same_as_forward"):  # restored after
        trainer._configure_compile()
        setting = torch._functorch.config.backward_pass_autocast
    assert setting == ("same_as_forward" if env == "f" else "off")
    assert ("torch.compile is off (nnUNet_compile=f)" if env == "f" else "outside autocast") in trainer.logged[0]
    assert trainer.shown == [env != "f"]  # the minutes of compiling are announced; an asked-for "off" is only logged


def _configure_compile_with(monkeypatch, compile_env, flag: str, env, inductor_options: dict):
    """A bare DANIETrainer_S's `_configure_compile` with `flag`=`env` set, on a CUDA machine (nnUNet_compile=
    `compile_env`); the Inductor options given, set to their values before and restored after, as it left them."""
    import torch._inductor.config as inductor_config
    _on_a_cuda_machine(monkeypatch, compile_env)
    if env is not None:
        monkeypatch.setenv(flag, env)
    trainer = _bare(DANIETrainer_S)
    with torch._functorch.config.patch(backward_pass_autocast="same_as_forward"), \
            inductor_config.patch(inductor_options):
        trainer._configure_compile()
        return trainer, {option: getattr(inductor_config, option) for option in inductor_options}


@pytest.mark.parametrize("compile_env, env", [(None, "t"), (None, None), ("f", "t")])
def test_upcast_per_use_installs_inductors_pass_where_the_trainer_compiles(monkeypatch, compile_env, env):
    from danie_nnunet.compiled import upcast_per_use
    trainer, after = _configure_compile_with(monkeypatch, compile_env, "DANIE_upcast_per_use", env,
                                             {"post_grad_custom_post_pass": None})
    installed = after["post_grad_custom_post_pass"]
    if env == "t" and compile_env is None:
        assert installed is upcast_per_use() and "stored in bf16" in trainer.logged[-1]
    else:  # off by default; ignored, and said so, where nothing compiles
        assert installed is None
        assert ("ignored: the network is not compiled" in trainer.logged[-1]) is (env == "t")


@pytest.mark.parametrize("env, expected", [(None, False), ("t", True), ("f", False)])
def test_under_ddp_compile_only_when_asked(monkeypatch, env, expected):
    # nnU-Net makes every BatchNorm a SyncBatchNorm under DDP, and torch.compile cannot trace those
    _on_a_cuda_machine(monkeypatch, env)
    trainer = _bare(DANIETrainer)
    trainer.is_ddp = True
    assert DANIETrainer._do_i_compile(trainer) is expected
    with torch._functorch.config.patch(backward_pass_autocast="same_as_forward"):
        trainer._configure_compile()
    expected_line = {None: "off under DDP", "t": "every SyncBatchNorm breaks the compiled graph",
                     "f": "off (nnUNet_compile=f)"}[env]
    assert expected_line in trainer.logged[0]


def test_no_compile_where_torch_cannot_trace_the_backward_outside_autocast(monkeypatch):
    # before torch 2.9 a compiled ES block would get a bf16 backward (danie_nnunet/compiled.py)
    _on_a_cuda_machine(monkeypatch, None)
    monkeypatch.delattr(torch._functorch.config, "backward_pass_autocast", raising=False)
    trainer = _bare(DANIETrainer_S)
    assert DANIETrainer._do_i_compile(trainer) is False
    trainer._configure_compile()
    assert "cannot trace compiled backward passes outside autocast" in trainer.logged[0]


@pytest.mark.parametrize("fails", [False, True])
def test_the_final_validation_runs_the_uncompiled_network(monkeypatch, fails):
    seen = []

    def validate(self, save_probabilities=False):
        seen.append(self.network)
        if fails:
            raise RuntimeError("export failed")

    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", validate)
    trainer = _bare(DANIETrainer_S)
    network = create_danie("S", (64, 64), 1, 3)
    trainer.network = torch.compile(network)  # lazy: nothing is compiled unless it is called
    compiled = trainer.network
    if fails:
        with pytest.raises(RuntimeError, match="export failed"):
            trainer.perform_actual_validation()
    else:
        trainer.perform_actual_validation()
    assert seen == [network] and trainer.network is compiled  # the trained (compiled) network is back


@pytest.mark.parametrize("env, device, dtype, scaler, ddp, records, line", [
    (None, "cuda", torch.bfloat16, False, False, False, None),  # off unless asked (not yet timed on a GPU)
    ("f", "cuda", torch.bfloat16, False, False, False, None),
    ("t", "cuda", torch.bfloat16, False, False, True, "autocast's weight casts done as one bf16 copy per step"),
    ("t", "cpu", None, False, False, False, "ignored: nnU-Net's training step runs without autocast on a cpu"),
    ("t", "cuda", torch.float16, True, False, False, "ignored: this run autocasts to float16 with a GradScaler"),
    ("t", "cuda", torch.bfloat16, False, True, False, "ignored: under DDP the copies' gradients would never be")])
def test_weight_copies_apply_where_asked_with_bf16_autocast_and_without_ddp(monkeypatch, env, device, dtype,
                                                                            scaler, ddp, records, line):
    _set_env(monkeypatch, "DANIE_cast_weights_once", env)
    monkeypatch.setattr(DANIETrainer, "_autocast_dtype", lambda self: dtype)  # a card's, on any machine
    trainer = _bare(DANIETrainer)
    trainer.device, trainer.is_ddp = torch.device(device), ddp
    trainer.grad_scaler = object() if scaler else None
    trainer._configure_weight_copies()
    assert trainer.records_weight_copies is records and trainer.weight_copies is None
    assert len(trainer.logged) == (line is not None) and all(line in logged for logged in trainer.logged)
    monkeypatch.setenv("DANIE_cast_weights_once", "once")
    with pytest.raises(DANIEConfigurationError, match="'once' is neither on"):
        trainer._configure_weight_copies()


@pytest.mark.parametrize("compile_env, env", [(None, "t"), (None, None), ("f", "t")])
def test_larger_fusions_raise_inductors_realise_thresholds_where_the_trainer_compiles(monkeypatch, compile_env, env):
    from danie_nnunet.compiled import LARGER_FUSIONS
    unset = {option: None for option in LARGER_FUSIONS}
    trainer, thresholds = _configure_compile_with(monkeypatch, compile_env, "DANIE_larger_fusions", env, unset)
    if env == "t" and compile_env is None:
        assert thresholds == LARGER_FUSIONS and "realise thresholds raised" in trainer.logged[-1]
    else:  # off by default; ignored, and said so, where nothing compiles
        assert thresholds == unset
        assert ("ignored: the network is not compiled" in trainer.logged[-1]) is (env == "t")
