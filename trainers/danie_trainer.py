"""DANIETrainer: nnU-Net's trainer with the DANIE network and the paper's recipe (spec §5).

Changes against nnUNetTrainer, nothing else:
- the network is DANIE (L here, S in DANIETrainer_S), built for the plans' 2D patch size rounded up to a
  multiple of 32 (the rounded patch size is written to the plans this run saves, so inference agrees);
- deep supervision is the paper's: the four heads p_1..p_4, each at full resolution, get 0.7 Dice + 0.3 CE
  with weight 1 (Eq. 12 alphas); the summed output y comes first (nnU-Net's online validation reads
  output[0]) with loss weight 0;
- AdamW, lr 1e-4, weight decay 1e-4, constant learning rate (CASCADE/MERIT lineage);
- on CUDA, autocast runs in bf16 where the card supports it (no GradScaler needed), else nnU-Net's fp16;
- ImageNet MaxViT weights are loaded from $DANIE_PRETRAINED when training starts (never at inference);
- speed (issue 4, docs/performance.md): channels-last memory format and fused AdamW; torch.compile as nnU-Net
  decides it (on CUDA unless nnUNet_compile=f; under DDP only if nnUNet_compile=t: SyncBatchNorm cannot be traced),
  with the backward traced outside autocast as eager autograd runs it (on an H100 the compiled DANIE-L passed the
  same-function check at 108.6 ms per step and 15.6 GiB, faster than the eager channels-last DANIE-L on the
  faster-memory H200, 130.4 ms and 20.9 GiB; compiling takes minutes at the first training and validation step;
  DANIE_compile_mode=reduce-overhead or combo-kernels, experimental, compiles in Inductor's CUDA-graph mode or
  with its horizontal fusion instead);
  inference (nnUNetv2_predict, the final validation) runs the uncompiled network and replays a captured CUDA graph
  per single-tile signature (on an H100 2.85x the eager single-tile throughput of DANIE-L, output identical;
  DANIE_cuda_graphs=f turns it off), and runs each mirrored tile with its three flips as one batch
  (DANIE_mirror_batching=f turns it off); activation recomputation when the planned batch would not fit the card, of as
  few segments as the estimate needs (or as DANIE_memory_gib asks); DANIE_cast_weights_once=t (experimental) does
  autocast's casts of the convolution and linear weights as one bf16 copy per training step (weight_cast.py).
Reliability (docs/reliability.md): dataset.json and patch size are checked before nnU-Net sets up; checkpoints
are written atomically (atomic_checkpoint.py); a step with a NaN/Inf loss or gradient is skipped and repeated
ones stop the run (nonfinite_guard.py).
Each epoch's log also says where its time went: training and validation steps, and the waits for their batches
(epoch_timing.py).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import autocast
from torch._dynamo import OptimizedModule

from danie_nnunet.checks import DatasetError, check_dataset_json
from danie_nnunet.compiled import (COMPILE_SETTINGS, can_trace_backward_outside_autocast, cuda_graph_skips,
                                   fuse_larger_expressions, replays_cuda_graphs, store_values_before_upcasts,
                                   trace_backward_outside_autocast)
from danie_nnunet.config import DANIEConfig, get_config
from danie_nnunet.memory import GIB, HEADROOM, budget_note, plan_recompute
from danie_nnunet.network import DANIE, plans_architecture
from danie_nnunet.patch_size import round_up_patch_size
from danie_nnunet.pretrained import ENV_VAR, load_imagenet_weights
from danie_nnunet.weight_cast import LowPrecisionWeights

from .atomic_checkpoint import remove_partial_writes, write_atomically
from .epoch_timing import EpochTiming
from .nonfinite_guard import NonFiniteLossError, NonFiniteStepGuard

NUM_HEADS = 4
# Inference (nnUNetv2_predict, the final validation) replays captured CUDA graphs of single tiles
# (danie_nnunet/cuda_graphs.py; checked against eager inference on an H100); DANIE_cuda_graphs=f turns it off
CUDA_GRAPHS_ENV = "DANIE_cuda_graphs"
# Test-time mirroring runs a tile and its three flips as one batch, where the predictor makes four calls of one
# (danie_nnunet/mirror_batching.py); DANIE_mirror_batching=f turns it off
MIRROR_BATCHING_ENV = "DANIE_mirror_batching"
# GiB of GPU memory that training plans for (default: 85 % of the card); activations that do not fit are
# recomputed in the backward pass, as few as fit (danie_nnunet/memory.py: plan_recompute)
MEMORY_ENV = "DANIE_memory_gib"
# The Inductor setting of a compiling trainer (default: Inductor's default, as nnU-Net compiles); reduce-overhead
# replays the compiled training step as CUDA graphs, combo-kernels launches independent generated kernels together
# (danie_nnunet/compiled.py; experimental: not yet timed in a trainer, docs/performance.md)
COMPILE_MODE_ENV = "DANIE_compile_mode"
# Autocast's casts of the convolution and linear weights, each where it is used, done instead as one bf16 copy of
# them per training step (danie_nnunet/weight_cast.py: the same function, some 700 fewer launches of a compiled step;
# experimental: not yet timed on a GPU). bf16 autocast (CUDA) only, not under DDP
CAST_WEIGHTS_ONCE_ENV = "DANIE_cast_weights_once"
# Compiled, a bf16 value that several ops upcast (GELU's gradient in each BatchNorm backward) stored in bf16, not as
# its fp32 upcast, nor as the fp32 expression it is the downcast of (danie_nnunet/upcast_per_use.py: the eager
# function to bf16 rounding; by Inductor's estimate 81.6 -> 72.1 GB for the split alone, 67.5 GB with the stored
# downcasts, of what the compiled DANIE-S step's generated kernels move; experimental: not yet timed on a GPU)
UPCAST_PER_USE_ENV = "DANIE_upcast_per_use"
# Compiled, Inductor's realise thresholds raised (danie_nnunet/compiled.py's LARGER_FUSIONS: fp32 intermediates of
# BatchNorm's and GELU's backward recomputed where they are read instead of stored; the same values; by Inductor's
# estimate DANIE-S's step at 512 x 512, batch 12, with both flags above moves 51.1 GB instead of 67.0). GPU only;
# experimental: not yet timed on a GPU
LARGER_FUSIONS_ENV = "DANIE_larger_fusions"


class DANIEConfigurationError(RuntimeError):
    """The nnU-Net configuration cannot be trained with DANIE."""


def fit_plans_to_danie(plans: dict, configuration: str, cfg: DANIEConfig) -> str:
    """Make the configuration in `plans` (in place) describe the DANIE network trained on it; return a log line.

    The patch size is rounded up to a multiple of 32 and the 'architecture' block names DANIE with its whole
    configuration, so the plans.json that training saves rebuilds this network, also without a DANIE trainer.
    Raises DANIEConfigurationError for configurations that are not 2D.
    """
    if configuration not in plans.get("configurations", {}):
        raise DANIEConfigurationError(f"configuration {configuration!r} is not in the plans; available: "
                                      f"{sorted(plans.get('configurations', {}))}")
    patch_size = list(PlansManager(plans).get_configuration(configuration).patch_size)
    if len(patch_size) != 2:
        raise DANIEConfigurationError(
            f"DANIE is a 2D network, but configuration {configuration!r} has the {len(patch_size)}D patch size "
            f"{patch_size}. Train the 2d configuration: nnUNetv2_train DATASET 2d FOLD -tr <DANIE trainer>")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in patch_size):
        raise DANIEConfigurationError(
            f"configuration {configuration!r} has the patch size {patch_size}, which no network can take (each axis "
            f"must be a positive integer): the plans file is damaged or was edited by hand. Run "
            f"nnUNetv2_plan_and_preprocess again or fix 'patch_size' in the plans")
    rounded = list(round_up_patch_size(patch_size))
    plans["configurations"][configuration]["patch_size"] = rounded
    plans["configurations"][configuration]["architecture"] = plans_architecture(cfg, rounded)
    if rounded == patch_size:
        return f"DANIE-{cfg.name}: patch size {patch_size} (a multiple of 32) used as planned"
    return (f"DANIE-{cfg.name}: patch size {patch_size} of configuration {configuration!r} rounded up to "
            f"{rounded} (DANIE needs multiples of 32; nnU-Net pads smaller images)")


class CompileDecision(NamedTuple):
    """DANIETrainer's torch.compile decision: whether, why (for the log), and whether the console shows it too
    (always when compiling, which takes minutes; not where the user turned it off or on a CPU/MPS run)."""
    compiles: bool
    reason: str
    to_console: bool = True


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment variable in nnU-Net's spelling (t/true/1, f/false/0); unset or empty: `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("true", "1", "t"):
        return True
    if value in ("false", "0", "f"):
        return False
    raise DANIEConfigurationError(f"{name}={os.environ[name]!r} is neither on (t, true, 1) nor off (f, false, 0)")


def memory_budget_gib() -> Optional[float]:
    """GiB that DANIE_memory_gib gives training, or None when it is unset."""
    value = os.environ.get(MEMORY_ENV, "").strip()
    if not value:
        return None
    try:
        gib = float(value)
    except ValueError:
        gib = 0.0
    if not 0 < gib < float("inf"):
        raise DANIEConfigurationError(f"{MEMORY_ENV}={os.environ[MEMORY_ENV]!r} is not a positive number of GiB "
                                      f"(e.g. {MEMORY_ENV}=12); unset it to plan for {HEADROOM:.0%} of the card")
    return gib


def compile_mode() -> Optional[str]:
    """The Inductor setting that DANIE_compile_mode asks for (danie_nnunet/compiled.py: COMPILE_SETTINGS), or None
    (unset, empty or "default": Inductor's default)."""
    value = os.environ.get(COMPILE_MODE_ENV, "").strip()
    if value in ("", "default"):
        return None
    if value not in COMPILE_SETTINGS:
        raise DANIEConfigurationError(f"{COMPILE_MODE_ENV}={value!r} is not an Inductor setting: use one of default, "
                                      f"{', '.join(COMPILE_SETTINGS)}, or unset it")
    return value


def _inside_ddp(network: torch.nn.Module) -> torch.nn.Module:
    """What DDP wraps (nnU-Net compiles the network first, then wraps it in DDP)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The DANIE module under DDP and torch.compile wrappers."""
    network = _inside_ddp(network)
    return network._orig_mod if isinstance(network, OptimizedModule) else network


def is_compiled(network: torch.nn.Module) -> bool:
    """Whether torch.compile wraps the network, under DDP or not."""
    return isinstance(_inside_ddp(network), OptimizedModule)


class DANIETrainer(EpochTiming, nnUNetTrainer):
    """DANIE-L (the paper's headline model) trained with nnU-Net's data pipeline and the paper's recipe."""

    danie_variant = "L"
    # nnU-Net's schedule; the short variants override these class attributes
    epochs = 1000
    iterations_per_epoch = 250
    val_iterations_per_epoch = 50
    # this many training steps in a row with a NaN/Inf loss or gradient stop the run (each one is skipped)
    max_consecutive_nonfinite_steps = 10
    # implementation only, the same function (issue 4, docs/performance.md): channels-last memory format, and
    # recomputation of the activation-heavy segments in the backward pass (DANIETrainer_recompute)
    channels_last = True
    recompute = False
    cuda_graphs = True  # DANIE_cuda_graphs overrides it
    mirror_batching = True  # DANIE_mirror_batching overrides it
    cast_weights_once = False  # DANIE_cast_weights_once overrides it
    upcast_per_use = False  # DANIE_upcast_per_use overrides it
    larger_fusions = False  # DANIE_larger_fusions overrides it
    weight_copies: Optional[LowPrecisionWeights] = None  # recorded at the first training step where it applies
    records_weight_copies = False
    marks_cudagraph_steps = False  # set where DANIE_compile_mode compiles with Inductor's CUDA graph trees
    cuda_graph_skips_seen = 0  # Inductor's count of graphs run without the CUDA graphs asked for, as last logged

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        try:  # before super(): nnU-Net answers a dataset.json without labels with a KeyError
            check_dataset_json(dataset_json)
        except DatasetError as e:
            raise DANIEConfigurationError(f"{e}\nFix dataset.json in nnUNet_raw and run "
                                          f"nnUNetv2_plan_and_preprocess again.") from None
        memory_budget_gib()  # a bad DANIE_memory_gib is refused now, not once training has set up
        patch_note = fit_plans_to_danie(plans, configuration, get_config(self.danie_variant))  # before super()
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.nonfinite_guard = NonFiniteStepGuard(self.max_consecutive_nonfinite_steps)
        self.initial_lr = 1e-4
        self.weight_decay = 1e-4
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.print_to_log_file(patch_note)
        if self.label_manager.has_regions:
            raise DANIEConfigurationError("DANIE trainers do not support region-based training (dataset.json "
                                          "'regions_class_order'); use integer labels")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> DANIE:
        # A classmethod with nnU-Net 2.8's signature, so each variant only names its configuration. Called at
        # inference without a trainer instance, so it must not load weights or read anything but its arguments.
        network = DANIE(get_config(cls.danie_variant), configuration_manager.patch_size, num_input_channels,
                        num_output_channels, enable_deep_supervision)
        if cls.channels_last:  # before nnU-Net compiles and wraps it in DDP
            network.set_channels_last()
        if cls.recompute:  # training only: eval-mode and no-grad forwards are unchanged
            network.set_grad_checkpointing()
        if env_flag(CUDA_GRAPHS_ENV, cls.cuda_graphs):  # eval-mode, no-grad CUDA forwards only
            network.set_cuda_graphs()
        if env_flag(MIRROR_BATCHING_ENV, cls.mirror_batching):  # eval-mode, no-grad single tiles only
            network.set_mirror_batching()
        return network

    def initialize(self):
        super().initialize()
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            # nnU-Net's train/validation steps use autocast's default dtype; bf16 has fp32's range, so
            # neither loss scaling nor the fp16 overflow risk of attention logits apply
            torch.set_autocast_dtype("cuda", torch.bfloat16)
            self.grad_scaler = None
            self.print_to_log_file("DANIE: mixed precision in bf16 (autocast default dtype), no GradScaler")
        if self.device.type == "cuda":
            self._recompute_if_batch_does_not_fit()
            self._configure_compile()
        self._apply_compile_mode()
        self._configure_weight_copies()
        report = load_imagenet_weights(unwrap_network(self.network))
        if report is None:
            self.print_to_log_file(f"DANIE: no ImageNet weights ({ENV_VAR} is not set): the MaxViT stream starts "
                                   f"from random init, unlike the paper (unless nnUNetv2_train's -pretrained_weights "
                                   f"loads a checkpoint next). Set {ENV_VAR} to a weights file or folder "
                                   f"(see `danie-nnunet download-weights`).", also_print_to_console=True)
        else:
            self.print_to_log_file(f"DANIE: {report}", also_print_to_console=True)

    def _compile_decision(self) -> CompileDecision:
        """Whether to compile the network, the log line that says why, and whether the console shows it too."""
        # a misspelt nnUNet_compile is refused here, where nnU-Net reads it as off
        if not env_flag("nnUNet_compile", True):
            return CompileDecision(False, "torch.compile is off (nnUNet_compile=f); compiled, DANIE-L trains faster "
                                          "and with less memory (docs/performance.md)", to_console=False)
        # nnU-Net's own rule: not on CPU or MPS, not on Windows (it logs why when nnUNet_compile=t asked)
        if not super()._do_i_compile():
            if self.device.type != "cuda":  # a CPU or MPS run, as in tests: no need to tell the console
                return CompileDecision(False, f"torch.compile is off: nnU-Net does not compile on a {self.device.type} "
                                              f"device", to_console=False)
            where = "on Windows (no triton)" if os.name == "nt" else "here (nnUNetTrainer._do_i_compile)"
            return CompileDecision(False, f"torch.compile is off: nnU-Net does not compile {where}")
        if not can_trace_backward_outside_autocast():  # DANIE's fp32 ES block would get a bf16 backward
            return CompileDecision(False, (
                f"torch.compile is off: torch {torch.__version__} cannot trace compiled backward passes outside "
                f"autocast (torch >= 2.9 can), so DANIE's fp32 channel self-attention would get a bf16 backward "
                f"(danie_nnunet/compiled.py)"))
        # under DDP nnU-Net makes each of DANIE's 62 BatchNorms a SyncBatchNorm, which torch.compile cannot trace
        # (pytorch/pytorch#107372, #161302): 62 graph breaks, so eager unless nnUNet_compile=t asks
        if self.is_ddp and not env_flag("nnUNet_compile", False):
            return CompileDecision(False, (
                "torch.compile is off under DDP: nnU-Net makes every BatchNorm a SyncBatchNorm, which torch.compile "
                "cannot trace (pytorch/pytorch#161302); nnUNet_compile=t compiles anyway"))
        ddp_note = " Under DDP every SyncBatchNorm breaks the compiled graph." if self.is_ddp else ""
        return CompileDecision(True, (
            "torch.compile on (nnU-Net's default; nnUNet_compile=f turns it off): the first training and validation "
            "steps compile for minutes; compiled backward passes are traced outside autocast, as eager autograd runs "
            "them (danie_nnunet/compiled.py)." + ddp_note))

    def _do_i_compile(self) -> bool:
        return self._compile_decision().compiles

    def _configure_compile(self) -> None:
        decision = self._compile_decision()
        if decision.compiles:
            trace_backward_outside_autocast()
        self.print_to_log_file(f"DANIE: {decision.reason}", also_print_to_console=decision.to_console)
        if env_flag(LARGER_FUSIONS_ENV, self.larger_fusions):
            if not decision.compiles:
                self.print_to_log_file(f"DANIE: {LARGER_FUSIONS_ENV} ignored: the network is not compiled")
            else:
                fuse_larger_expressions()
                self.print_to_log_file(f"DANIE: {LARGER_FUSIONS_ENV}: compiled with Inductor's realise thresholds "
                                       f"raised (danie_nnunet/compiled.py; experimental)", also_print_to_console=True)
        if not env_flag(UPCAST_PER_USE_ENV, self.upcast_per_use):
            return
        if not decision.compiles:
            self.print_to_log_file(f"DANIE: {UPCAST_PER_USE_ENV} ignored: the network is not compiled")
        elif store_values_before_upcasts():
            self.print_to_log_file(f"DANIE: {UPCAST_PER_USE_ENV}: compiled, values that several ops upcast are stored "
                                   f"in bf16 (danie_nnunet/upcast_per_use.py; experimental)", also_print_to_console=True)
        else:
            self.print_to_log_file(f"DANIE: {UPCAST_PER_USE_ENV} ignored: another Inductor post-grad pass is installed "
                                   f"(torch._inductor.config.post_grad_custom_post_pass)", also_print_to_console=True)

    def _apply_compile_mode(self) -> None:
        """Recompile (lazily: nothing is traced yet) the network nnU-Net compiled in DANIE_compile_mode's setting.
        Not under DDP, whose gradient hooks a CUDA graph replay of the backward would have to keep."""
        mode = compile_mode()  # a misspelt mode is refused whether or not the network is compiled
        if mode is None:
            return
        if not is_compiled(self.network):
            self.print_to_log_file(f"DANIE: {COMPILE_MODE_ENV}={mode} ignored: the network is not compiled")
            return
        if self.is_ddp:
            self.print_to_log_file(f"DANIE: {COMPILE_MODE_ENV}={mode} ignored under DDP: Inductor's default mode "
                                   f"compiles", also_print_to_console=True)
            return
        self.network = torch.compile(unwrap_network(self.network), **COMPILE_SETTINGS[mode])
        self.marks_cudagraph_steps = replays_cuda_graphs(mode)
        self.cuda_graph_skips_seen = cuda_graph_skips()
        self.print_to_log_file(f"DANIE: torch.compile in Inductor's {mode} setting ({COMPILE_MODE_ENV}; "
                               f"experimental, not yet timed in a trainer: docs/performance.md)",
                               also_print_to_console=True)

    def _autocast_dtype(self) -> Optional[torch.dtype]:
        """The dtype of nnU-Net's training-step autocast (on CUDA: bf16 where the card has it, else fp16), or None:
        no autocast (CPU, MPS)."""
        return torch.get_autocast_dtype("cuda") if self.device.type == "cuda" else None

    def _autocast(self):
        dtype = self._autocast_dtype()
        return autocast(self.device.type, dtype=dtype) if dtype is not None else dummy_context()

    def _configure_weight_copies(self) -> None:
        """DANIE_cast_weights_once: say whether it applies; the copies are recorded at the first training step."""
        self.weight_copies, self.records_weight_copies = None, False
        if not env_flag(CAST_WEIGHTS_ONCE_ENV, self.cast_weights_once):
            return
        dtype = self._autocast_dtype()
        if dtype is None:
            why = f"nnU-Net's training step runs without autocast on a {self.device.type} device"
        elif dtype != torch.bfloat16 or self.grad_scaler is not None:
            why = f"this run autocasts to {str(dtype).split('.')[-1]} with a GradScaler, not to bf16"
        elif self.is_ddp:
            why = "under DDP the copies' gradients would never be all-reduced"
        else:
            self.records_weight_copies = True
            self.print_to_log_file(f"DANIE: {CAST_WEIGHTS_ONCE_ENV}: autocast's weight casts done as one bf16 copy "
                                   f"per step (danie_nnunet/weight_cast.py; experimental), recorded at the first "
                                   f"training step", also_print_to_console=True)
            return
        self.print_to_log_file(f"DANIE: {CAST_WEIGHTS_ONCE_ENV} ignored: {why}", also_print_to_console=True)

    def _record_weight_copies(self, data: torch.Tensor) -> None:
        """Which parameters autocast casts in a forward pass of this batch (eager, no gradients, the BatchNorm
        statistics left as they were), and their copies."""
        module = unwrap_network(self.network)
        self.weight_copies = LowPrecisionWeights.record(module, lambda: module(data), self.device.type,
                                                        self._autocast_dtype())
        self.records_weight_copies = False
        self.print_to_log_file(f"DANIE: {self.weight_copies.summary()}", also_print_to_console=True)

    def _recompute_if_batch_does_not_fit(self) -> None:
        """Recompute in the backward pass as few segments as the batch needs to fit the card, or DANIE_memory_gib
        (danie_nnunet/memory.py: plan_recompute; the eager estimate was within 3 % of what an H200 measured for S
        and L, with and without recomputation; compiled, 13-15 % above an H100's DANIE-S and DANIE-L: a trainer whose
        network nnU-Net compiled recomputes nothing where its compiled estimate fits). DANIETrainer_recompute
        recomputes its fixed segments instead."""
        network = unwrap_network(self.network)
        if self.recompute or not isinstance(network, DANIE):
            return
        card = torch.cuda.get_device_properties(self.device).total_memory / GIB
        asked = memory_budget_gib()
        budget = HEADROOM * card if asked is None else min(asked, card)
        plan = plan_recompute(network.cfg, network.img_size, network.in_chans, network.num_classes,
                              self.batch_size, budget, compiled=is_compiled(self.network))
        if plan.segments:
            network.set_grad_checkpointing(segments=plan.segments)
        if plan.segments or asked is not None:
            source = f"{MEMORY_ENV}={asked:g}" if asked is not None else f"{HEADROOM:.0%} of this card's {card:.0f} GiB"
            self.print_to_log_file(f"DANIE: memory budget {budget:.1f} GiB ({source}): {budget_note(plan)}",
                                   also_print_to_console=True)

    def perform_actual_validation(self, save_probabilities: bool = False):
        # as nnUNetv2_predict runs it: uncompiled with CUDA graphs of single tiles (nnU-Net's predictor compiles
        # only when nnUNet_compile=t is set), instead of compiling single-tile inference for minutes
        trained = self.network
        self.network = unwrap_network(trained)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.network = trained

    def on_epoch_end(self):
        if self.marks_cudagraph_steps:
            self._log_cuda_graph_skips()
        super().on_epoch_end()

    def _log_cuda_graph_skips(self) -> None:
        """Say so when compiled graphs ran without the CUDA graphs that DANIE_compile_mode asked for: their steps
        would otherwise be slow without a word in the log."""
        skips = cuda_graph_skips()
        if skips > self.cuda_graph_skips_seen:
            self.print_to_log_file(
                f"DANIE: {skips - self.cuda_graph_skips_seen} compiled graph(s) ran without the CUDA graphs that "
                f"{COMPILE_MODE_ENV}={compile_mode()} asks for, launching each kernel from the host; torch's warning "
                f"'skipping cudagraphs due to ...' says why", also_print_to_console=True)
            self.cuda_graph_skips_seen = skips

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            for path in remove_partial_writes(self.output_folder):
                self.print_to_log_file(f"DANIE: removed {path}, a checkpoint write interrupted by a killed run")

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net's checkpoint, written to a temporary file and renamed: never a truncated checkpoint_latest.pth
        write_atomically(super().save_checkpoint, filename)

    def train_step(self, batch: dict) -> dict:
        return self.timed_step("train", self._guarded_train_step, batch)  # for the epoch's timing line

    def validation_step(self, batch: dict) -> dict:
        return self.timed_step("validation", self._validation_step_on_device_targets, batch)

    def _validation_step_on_device_targets(self, batch: dict) -> dict:
        return nnUNetTrainer.validation_step(self, dict(batch, target=self._targets_on_device(batch["target"])))

    def _targets_on_device(self, target):
        """The batch's segmentation on the device, once per output under deep supervision. y and the four heads
        are all at full resolution, so the data loader sends one target (no deep-supervision scales, see
        _get_deep_supervision_scales) and each output's loss reads the same tensor on the device."""
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        if self.enable_deep_supervision and not isinstance(target, list):
            target = [target] * (NUM_HEADS + 1)
        return target

    def _guarded_train_step(self, batch: dict) -> dict:
        # nnU-Net's train_step (autocast on CUDA, GradScaler if fp16, clipping at 12) with the NaN/Inf guard
        data = batch["data"].to(self.device, non_blocking=True)
        target = self._targets_on_device(batch["target"])
        self.optimizer.zero_grad(set_to_none=True)
        if self.marks_cudagraph_steps:
            # a new iteration for Inductor's CUDA graph trees (DANIE_compile_mode=reduce-overhead): a step the guard
            # skipped before its backward (a verdict taken on the host) would otherwise keep the next forward off them
            torch.compiler.cudagraph_mark_step_begin()
        if self.records_weight_copies:
            self._record_weight_copies(data)
        copies = self.weight_copies
        self.nonfinite_guard.keep_running_statistics(self.network)  # a skipped step puts them back
        with self._autocast():
            output = self.network(data) if copies is None else copies(self.network, data)
            loss = self.loss(output, target)
        widen = None if copies is None else copies.gradients_to_parameters  # the copies' gradients to fp32
        self.nonfinite_guard.backward_and_step(loss, self.network.parameters(), self.optimizer, self.grad_scaler,
                                               ddp=self.is_ddp, after_backward=widen)
        loss_value = loss.detach().cpu().numpy()  # nnU-Net's readout: the step's one wait for the device
        try:
            stepped = self.nonfinite_guard.settle()
        except NonFiniteLossError as stop:
            self.print_to_log_file(str(stop), also_print_to_console=False)  # the console gets the traceback
            raise
        if not stepped:
            self.print_to_log_file(f"DANIE: training step skipped, {self.nonfinite_guard.last_reason} "
                                   f"({self.nonfinite_guard.consecutive} in a row; the run stops at "
                                   f"{self.nonfinite_guard.patience})", also_print_to_console=True)
        return {"loss": loss_value}

    def configure_optimizers(self):
        # fused (the same update as the default foreach implementation): one kernel for all parameters, and it
        # takes the NaN guard's verdict on the device (nonfinite_guard.py), so the step never waits for the device
        # before its loss is read. Fused on a CPU as well, so that CPU runs take the GPU's code path.
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      fused=self.device.type in ("cuda", "cpu"))
        # exponent 0: nnU-Net's per-epoch scheduler hook with the paper's constant learning rate
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.0)

    def _get_deep_supervision_scales(self):
        # y and the four heads are all at full resolution, so every target would be the unscaled segmentation:
        # nnU-Net's loader would copy it five times per batch (five batch tensors through its worker queues,
        # pinned and sent to the device one by one; 10-14 % of a worker's time per 512 x 512 batch of 12
        # on a CPU core, bench/loader_targets.py). It sends it once, and _targets_on_device repeats it on the device.
        return None

    def _build_loss(self):
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=0.3, weight_dice=0.7,
                              ignore_label=self.label_manager.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        if self._do_i_compile():
            loss.dc = torch.compile(loss.dc)
        if not self.enable_deep_supervision:
            return loss
        # y (index 0) only feeds validation; every parameter still gets gradients through the heads (DDP-safe)
        return DeepSupervisionWrapper(loss, [0.0] + [1.0] * NUM_HEADS)

    def set_deep_supervision_enabled(self, enabled: bool):
        unwrap_network(self.network).deep_supervision = enabled
