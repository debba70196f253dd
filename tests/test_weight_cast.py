"""Autocast's weight casts done as one low-precision copy per step (danie_nnunet/weight_cast.py, issue 4): which
parameters are copied, and that a step through the copies is the step without them, eager (bitwise, DANIE-S) and
compiled (a small network: bitwise, no recompiles, fewer generated kernels). On a CPU under its bf16 autocast, which
casts convolution and linear weights as CUDA's does."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from danie_nnunet import create_danie
from danie_nnunet.compiled import backward_outside_autocast, generated_kernels
from danie_nnunet.weight_cast import LowPrecisionWeights, castable_parameters

BF16 = torch.bfloat16


class Toy(nn.Module):
    """A convolution and a linear layer (cast by autocast), a BatchNorm (not), a weight that is also summed, two
    weights concatenated before their cast (as HAP's paired convolutions) and a scale (a multiplication)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.lin = nn.Linear(8, 4)
        self.shared = nn.Parameter(torch.randn(4, 8))
        self.left, self.right = nn.Parameter(torch.randn(2, 8, 1, 1)), nn.Parameter(torch.randn(2, 8, 1, 1))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x)))
        pair = F.conv2d(x, torch.cat([self.left, self.right]))
        pooled = x.mean((2, 3))
        return self.lin(pooled) * self.scale + F.linear(pooled, self.shared) * self.shared.sum() + pair.mean((2, 3))


def _step(net, x, weights=None, network=None):
    network = network if network is not None else net
    with torch.autocast("cpu", dtype=BF16):
        out = network(x) if weights is None else weights(network, x)
        loss = sum(o.float().square().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
    loss.backward()
    if weights is not None:
        weights.gradients_to_parameters()
    return out, loss


def _grads(net):
    return {n: p.grad for n, p in net.named_parameters()}


def test_only_what_autocast_alone_casts_is_copied_and_the_recording_leaves_the_module_as_it_was():
    torch.manual_seed(0)
    net, x = Toy().train(), torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    names = castable_parameters(net, lambda: net(x), "cpu", BF16)
    assert names == ["conv.weight", "conv.bias", "lin.weight", "lin.bias"]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics too
    with torch.autocast("cpu", dtype=torch.float16):  # another dtype: only what autocast casts to it
        assert castable_parameters(net, lambda: net(x), "cpu", BF16) == names
    assert castable_parameters(net, lambda: net(x), "cpu", torch.float16) == names


def test_a_step_through_the_copies_is_bitwise_the_step_without_them_and_accumulates_as_autograd():
    torch.manual_seed(0)
    plain, x = Toy().train(), torch.randn(2, 3, 8, 8)
    fast = Toy().train()
    fast.load_state_dict(plain.state_dict())
    weights = LowPrecisionWeights.record(fast, lambda: fast(x), "cpu", BF16)
    for _ in range(2):  # the second backward adds to the first's gradients, as autograd's accumulation does
        out_plain, loss_plain = _step(plain, x)
        out_fast, loss_fast = _step(fast, x, weights)
        assert torch.equal(out_plain, out_fast) and torch.equal(loss_plain, loss_fast)
        for name, grad in _grads(plain).items():
            assert torch.equal(grad, _grads(fast)[name]), name
    assert all(copy.grad is None for copy in weights._copies)  # dropped once widened
    assert "4 of the network's 10 parameters" in weights.summary()


def test_danie_s_trains_bitwise_as_without_copies_and_new_parameters_get_new_copies():
    torch.manual_seed(0)
    plain = create_danie("S", (64, 64), 1, 4, deep_supervision=True)
    fast = create_danie("S", (64, 64), 1, 4, deep_supervision=True)
    fast.load_state_dict(plain.state_dict())
    for net in (plain, fast):
        net.set_channels_last()
        net.train()
    x = torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    weights = LowPrecisionWeights.record(fast, lambda: fast(x), "cpu", BF16)
    modules = dict(fast.named_modules())
    owners = {type(modules[name.rpartition(".")[0]]) for name in weights.names}
    assert len(weights) > 300 and all(issubclass(o, (nn.Conv2d, nn.Linear)) for o in owners), owners  # no norm
    optimizers = [torch.optim.AdamW(n.parameters(), lr=1e-3, weight_decay=1e-4, fused=True) for n in (plain, fast)]
    for step in range(3):
        if step == 2:  # parameters replaced, as load_state_dict(assign=True) does: the copies follow
            fast.load_state_dict({k: v.clone() for k, v in fast.state_dict().items()}, assign=True)
            optimizers[1] = torch.optim.AdamW(fast.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
            optimizers[1].load_state_dict(copy.deepcopy(optimizers[0].state_dict()))  # not sharing moments
        results = []
        for net, optimizer, copies in ((plain, optimizers[0], None), (fast, optimizers[1], weights)):
            optimizer.zero_grad(set_to_none=True)
            outputs, loss = _step(net, x, copies)
            results.append((outputs, loss, {n: p.grad.clone() for n, p in net.named_parameters()}))
            optimizer.step()
        (out_a, loss_a, grads_a), (out_b, loss_b, grads_b) = results
        assert torch.equal(loss_a, loss_b), step
        assert all(torch.equal(a, b) for a, b in zip(out_a, out_b)), step
        assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a), step
        assert all(g.stride() == p.stride() for g, p in zip(grads_b.values(), fast.parameters()))  # channels-last
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), name
    assert weights._parameters[0] is dict(fast.named_parameters())[weights.names[0]]


def test_misuse_is_refused_with_what_to_do():
    torch.manual_seed(0)
    net, x = Toy().train(), torch.randn(2, 3, 8, 8)
    weights = LowPrecisionWeights.record(net, lambda: net(x), "cpu", BF16)
    with pytest.raises(RuntimeError, match=r"call it under torch.autocast\('cpu', dtype=torch.bfloat16\)"):
        weights(net, x)
    with torch.autocast("cpu", dtype=BF16):
        with pytest.raises(ValueError, match="does not hold the parameters these copies are of"):
            weights(Toy(), x)
        ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
        with pytest.raises(ValueError, match="DDP would never all-reduce"):
            weights(ddp, x)
    with pytest.raises(ValueError, match="'norm.running_mean' is not a parameter"):
        LowPrecisionWeights(net, ["norm.running_mean"])
    nothing = LowPrecisionWeights(net, [])  # nothing castable (no autocast): the network itself runs
    assert torch.equal(nothing(net, x), net(x))


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(8 if i else 3, 8, 3, padding=1) for i in range(4))
        self.norms = nn.ModuleList(nn.BatchNorm2d(8) for _ in range(4))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x)))
        return self.head(x.mean((2, 3)))


def test_compiled_through_the_copies_is_the_same_step_in_fewer_kernels_without_recompiling():
    """torch.compile of the network called through the copies (torch.func.functional_call on the compiled
    wrapper): the same outputs and gradients as the compiled network without them (one rounded as eager rounds it),
    one graph compiled once, and the casts gone from Inductor's generated kernels (DANIE-S on this CPU: 2 855
    against 3 645, docs/performance.md)."""
    results, kernels = [], []
    for copies in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        net, x = Small().train(), torch.randn(2, 3, 16, 16)
        compiled = torch.compile(net)
        weights = LowPrecisionWeights.record(net, lambda: net(x), "cpu", BF16) if copies else None
        graphs, outputs = [], {}
        for step in range(3):
            net.zero_grad(set_to_none=True)
            with backward_outside_autocast():
                count = generated_kernels(lambda: outputs.update(out=_step(net, x, weights, compiled)[0]))
            if step == 0:
                kernels.append(count)
                assert kernels[-1] > 0
            graphs.append(counters["stats"]["unique_graphs"])
            with torch.no_grad():
                for p in net.parameters():  # a new step's weights: the copies must be refreshed
                    p.add_(0.01)
        assert graphs[1:] == graphs[:1] * 2, graphs  # compiled once, not again for new weights
        results.append((outputs["out"].detach(), _grads(net)))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    # where Inductor fused a bf16 gradient's widening into the reduction that computes it (the linear layer's bias
    # gradient: a sum), the compiled step without copies skips eager's rounding to bf16; through the copies the
    # gradient is rounded as eager autograd rounds it (DANIE-S: all 621 gradients bitwise equal, docs/performance.md)
    rounded = [n for n in grads_a if not torch.equal(grads_a[n], grads_b[n])]
    assert rounded == ["head.bias"], rounded
    assert torch.equal(grads_a["head.bias"].to(BF16).float(), grads_b["head.bias"])
    assert kernels[1] < kernels[0], kernels
