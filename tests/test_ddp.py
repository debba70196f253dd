"""DANIE-S, DANIE-L and every ablation row under DistributedDataParallel(find_unused_parameters=False), nnU-Net's
setting: 2 CPU processes (gloo), the trainer's own loss (heads only, y weight 0, nnU-Net's DDP batch Dice).

nnU-Net's `-num_gpus` path needs CUDA/NCCL; this tests the contract it relies on: every parameter gets a gradient
in every step (else DDP stops with "Expected to have finished reduction"), gradients are identical on all ranks
after the all-reduce, and a step skipped for a NaN loss on one rank is skipped on every rank.
"""
import json
import os
import socket
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from danie_nnunet import create_danie
from danie_nnunet.config import ABLATION_SWITCHES, get_config

def distinct_configurations():
    """S, L and every ablation row, each architecture once (C.5 = DANIE-L and A.5 = B.4 = C.2 are the same nets)."""
    names, seen = [], set()
    for name in ["S", "L", *sorted(ABLATION_SWITCHES)]:
        key = json.dumps({k: v for k, v in get_config(name).to_dict().items() if k != "name"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


CONFIGS = distinct_configurations()
SIZE, CLASSES = (64, 64), 3


def trainer_loss():
    """DANIETrainer._build_loss as it runs under DDP (real code, the trainer's few attributes it reads)."""
    from danie_nnunet.trainers import DANIETrainer
    trainer = types.SimpleNamespace(configuration_manager=types.SimpleNamespace(batch_dice=True), is_ddp=True,
                                    label_manager=types.SimpleNamespace(ignore_label=None),
                                    _do_i_compile=lambda: False, enable_deep_supervision=True)
    return DANIETrainer._build_loss(trainer)


def fingerprint(tensors):
    """Per tensor: sum and L2 norm. The same reduction of bitwise equal tensors gives bitwise equal results, and
    tensors that differ anywhere (practically) never agree on both."""
    return torch.stack([torch.stack([t.sum(), torch.linalg.vector_norm(t)]) for t in tensors])


def same_on_all_ranks(t):
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def rank_batch(rank, nan=False):
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data, as nnU-Net's per-rank loaders
    x = torch.randn(2, 1, *SIZE, generator=g)
    if nan:
        x[0, 0, 0, 0] = float("nan")
    target = torch.randint(0, CLASSES, (2, 1, *SIZE), generator=g).float()
    return x, [target] * 5


def worker(rank, world_size, port, out_dir):
    from danie_nnunet.trainers.nonfinite_guard import NonFiniteStepGuard
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    loss_fn, report = trainer_loss(), {}
    for name in CONFIGS:
        torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
        net = create_danie(name, SIZE, 1, CLASSES, deep_supervision=True)
        model = DDP(net, find_unused_parameters=False)
        params = list(net.parameters())
        assert same_on_all_ranks(fingerprint(params)), f"{name}: DDP did not broadcast the initial weights"
        x, target = rank_batch(rank)
        if name == "S":  # control: without the all-reduce the gradients differ between ranks
            with model.no_sync():
                loss_fn(model(x), target).backward()
            assert not same_on_all_ranks(fingerprint([p.grad for p in params])), "control: data do not differ"
            model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        unused = [n for n, p in net.named_parameters() if p.grad is None]
        assert not unused, f"{name}: parameters without gradient break DDP(find_unused_parameters=False): {unused}"
        assert same_on_all_ranks(fingerprint([p.grad for p in params])), f"{name}: gradients differ across ranks"
        model(x)  # DDP raises here if the previous backward left a parameter unreduced
        report[name] = {"loss": float(loss), "params": len(params)}
        if name == "S":  # a NaN loss on rank 1 only: every rank skips the step, then training goes on
            # fused as DANIETrainer's (the verdict all-reduced on the device), then foreach (decided on the host)
            for fused in (True, False):
                guard = NonFiniteStepGuard(patience=3)
                optimizer = torch.optim.AdamW(params, lr=1e-4, fused=fused, foreach=not fused)
                model.zero_grad(set_to_none=True)
                for nan, expect in ((rank == 1, False), (False, True)):
                    optimizer.zero_grad(set_to_none=True)
                    x, target = rank_batch(rank, nan)
                    guard.keep_running_statistics(net)
                    guard.backward_and_step(loss_fn(model(x), target), params, optimizer, ddp=True)
                    stepped = guard.settle()
                    assert stepped is expect, f"rank {rank}: step {'applied' if stepped else 'skipped'}"
                    assert same_on_all_ranks(fingerprint(params)), "weights differ after a (skipped) step"
                    assert all(torch.isfinite(b).all() for b in net.buffers()), "NaN in BatchNorm statistics"
                report[f"guard_fused_{fused}"] = guard.skipped
        del model, net
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_every_configuration_trains_under_ddp_without_unused_parameters(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    reports = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert len(CONFIGS) == 2 + len(ABLATION_SWITCHES) - 3  # S, L and 11 distinct ablation architectures
    for report in reports:
        assert sorted(k for k in report if not k.startswith("guard")) == sorted(CONFIGS)
        # the NaN step was skipped on both ranks, with either optimiser
        assert report["guard_fused_True"] == report["guard_fused_False"] == 1
    for name in CONFIGS:  # each rank saw its own data, so its own loss
        assert reports[0][name]["loss"] != reports[1][name]["loss"]
        assert reports[0][name]["params"] == reports[1][name]["params"]
