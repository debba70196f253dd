"""Channels-last and activation recomputation are the same function as the plain network (issue 4)."""
import copy
import pickle

import pytest
import torch

from danie_nnunet import create_danie
from danie_nnunet.recompute import DEFAULT_SEGMENTS, recompute_candidates, set_recompute


def _train_step(net, x):
    net.zero_grad(set_to_none=True)
    out = net(x)
    sum(o.square().mean() for o in out[1:]).backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    return torch.stack(out).detach(), grads, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def plain_and_step():
    torch.manual_seed(0)
    net = create_danie("S", (64, 64), 1, 4, deep_supervision=True).train()
    x = torch.randn(2, 1, 64, 64)
    return net, x, _train_step(copy.deepcopy(net), x)


@pytest.mark.parametrize("segments", ["default", "every candidate"])
def test_recompute_gives_identical_outputs_gradients_and_batchnorm_statistics(plain_and_step, segments):
    net, x, (out, grads, state) = plain_and_step
    fast = copy.deepcopy(net)
    segments = DEFAULT_SEGMENTS if segments == "default" else recompute_candidates(fast)
    assert fast.set_grad_checkpointing(segments=segments) == list(segments)
    out_r, grads_r, state_r = _train_step(fast, x)
    assert torch.equal(out_r, out) and torch.equal(grads_r, grads)
    # the second (recomputing) forward must not move BN running statistics or counters a second time
    assert state_r.keys() == state.keys() and all(torch.equal(state_r[k], state[k]) for k in state)


def test_recompute_can_be_switched_off_and_survives_deepcopy_and_pickle(plain_and_step):
    net = copy.deepcopy(plain_and_step[0])
    net.set_grad_checkpointing()
    twin = copy.deepcopy(net)
    assert twin.sap.stages_0.forward.args[0] is twin.sap.stages_0  # bound to the copy, not the original
    assert pickle.loads(pickle.dumps(net)).hap.embed._danie_recompute
    assert net.set_grad_checkpointing(False) == []
    assert not any("forward" in vars(m) for m in net.modules())


def test_recompute_leaves_eval_and_no_grad_forwards_alone(plain_and_step):
    net, x, _ = plain_and_step
    fast = copy.deepcopy(net).eval()
    fast.set_grad_checkpointing()
    ref = copy.deepcopy(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=0)


def test_recompute_names_unknown_segments():
    net = create_danie("A.1", (64, 64), 1, 2)  # no HAP stream: its segments are skipped
    assert "hap.embed" not in set_recompute(net)
    with pytest.raises(ValueError, match="no submodule"):
        set_recompute(net, ["joint_preservation.nonexistent"])
    with pytest.raises(ValueError, match="no submodule 'sap.stage_0'"):  # a typo inside a stream that exists
        set_recompute(net, ["sap.stage_0"])


def test_channels_last_is_the_same_function_and_its_checkpoints_load_both_ways(plain_and_step):
    net, x, _ = plain_and_step
    # in float64: only the summation order differs (in fp32 this random-init network amplifies it to ~2e-4)
    out, grads, _ = _train_step(copy.deepcopy(net).double(), x.double())
    fast = copy.deepcopy(net).double().set_channels_last()
    assert fast.sap.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out_c, grads_c, state_c = _train_step(fast, x.double())
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(out_c, out) < 1e-8 and rel(grads_c, grads) < 1e-8
    plain = create_danie("S", (64, 64), 1, 4, deep_supervision=True)
    plain.load_state_dict(fast.state_dict())  # a channels-last checkpoint in a plain network, and back
    fast.load_state_dict(plain.state_dict())
    assert fast.sap.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_channels_last_network_feeds_every_convolution_and_batchnorm_channels_last(in_chans):
    # an NCHW tensor in a channels-last network makes cuDNN convert it or run its slow NCHW BatchNorm
    net = create_danie("S", (64, 64), in_chans, 4, deep_supervision=True).set_channels_last().train()
    names = {m: n for n, m in net.named_modules()}
    nchw = []

    def check(module, args, output):
        for role, t in (("input", args[0]), ("output", output)):
            ambiguous = t.shape[1] == 1 or t.shape[2] * t.shape[3] == 1  # both layouts at once
            if not ambiguous and not t.is_contiguous(memory_format=torch.channels_last):
                nchw.append(f"{names[module]} {role}")

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            m.register_forward_hook(check)
    net(torch.randn(2, in_chans, 64, 64))
    assert not nchw, nchw


def test_fast_norm_switches_every_maxvit_layernorm_and_nothing_else(plain_and_step):
    net, x, (out, grads, state) = plain_and_step
    fast = copy.deepcopy(net).set_fast_norm()
    flags = {name: m._fast_norm for name, m in fast.named_modules() if hasattr(m, "_fast_norm")}
    maxvit = [f for name, f in flags.items() if name.startswith("sap.")]
    assert len(maxvit) == 4 * 11 and all(maxvit)  # 11 MaxViT blocks, two attention blocks of two LayerNorms each
    assert not any(f for name, f in flags.items() if not name.startswith("sap."))  # ES/EH's own norms stay
    out_f, grads_f, state_f = _train_step(fast, x)  # without autocast it is F.layer_norm itself
    assert torch.equal(out_f, out) and torch.equal(grads_f, grads) and state_f.keys() == state.keys()
    assert not any(m._fast_norm for m in fast.set_fast_norm(False).modules() if hasattr(m, "_fast_norm"))
    assert create_danie("A.2", (64, 64), 1, 2).set_fast_norm().sap is None  # a row without MaxViT: nothing to do
