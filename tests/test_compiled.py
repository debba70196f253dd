"""A compiled DANIE block computes what the eager one does: under bf16 autocast (danie_nnunet/compiled.py), and with
recomputation (danie_nnunet/recompute.py)."""
import copy

import torch

from danie_nnunet import create_danie
from danie_nnunet.compiled import backward_outside_autocast
from danie_nnunet.context import ChannelSelfAttention
from danie_nnunet.recompute import set_recompute


def _input_gradient(module, s):
    s = s.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(s)
    (out.float() * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return s.grad


def test_compiled_channel_self_attention_keeps_its_fp32_backward():
    # ES runs in fp32 with autocast off; traced under the forward's bf16 autocast (torch's default through 2.14)
    # its compiled backward runs in bf16, about 4e-3 from eager
    torch.manual_seed(0)
    es = ChannelSelfAttention()
    es.gamma.data.fill_(0.5)
    s = torch.randn(2, 32, 16, 16)
    eager = _input_gradient(copy.deepcopy(es), s)
    torch._dynamo.reset()
    with backward_outside_autocast():
        compiled = _input_gradient(torch.compile(copy.deepcopy(es)), s)
    assert ((compiled - eager).norm() / eager.norm()).item() < 1e-5


class _Holder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _train_step(module, x):
    x = x.clone().requires_grad_()
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return [y.detach(), x.grad, *[p.grad for p in module.parameters()], *[b.clone() for b in module.buffers()]]


def _saved_bytes(module, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        module(x.clone().requires_grad_())
    return sum(saved)


def test_a_compiled_recomputed_segment_is_the_same_function_and_still_frees_its_activations():
    # the trainers compile by default and recompute on cards the batch does not fit: a MaxViT MBConv (BatchNorm,
    # GELU, depthwise convolution) compiled with recomputation against eager without, two training steps in float64
    torch.manual_seed(0)
    block = create_danie("S", (32, 32), 1, 3).double().sap.stages_0.blocks[0].conv
    eager, fast, kept = (_Holder(copy.deepcopy(block)).train() for _ in range(3))
    set_recompute(fast, ["inner"])
    in_channels = next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.randn(2, in_channels, 16, 16, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(fast)
    for _ in range(2):  # the second step starts from the BatchNorm statistics the first one left
        for a, b in zip(_train_step(eager, x), _train_step(compiled, x)):
            assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12)
    # num_batches_tracked counted once per step, not again by the recomputation
    assert all(b.item() == 2 for n, b in fast.named_buffers() if n.endswith("num_batches_tracked"))
    # the compiled graph keeps the recomputation: it saves a fraction of what the compiled segment saves without it
    assert _saved_bytes(compiled, x) < 0.3 * _saved_bytes(torch.compile(kept), x)


def test_a_training_step_has_nothing_that_keeps_cuda_graphs_off():
    # Inductor replays a compiled graph as CUDA graphs (DANIE_compile_mode=reduce-overhead) only where the graph holds
    # no CPU tensor and mutates no input but parameters and buffers; else it runs the graph without them
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from danie_nnunet.bench import _losses, build_danie

    class CPUTensorsMade(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten(out)[0]):
                self.ops.append(str(func))
            return out

    meta = torch.device("meta")  # shapes and devices without computing
    net = build_danie("S", 64, 1, 9, "cl", batch=2).to(meta).train()
    x = torch.randn(2, 1, 64, 64, device=meta).to(memory_format=torch.channels_last)
    loss_fn, _ = _losses("danie", 5, compiled=False)
    target = torch.randint(0, 9, (2, 1, 64, 64), device=meta).float()
    version, made = x._version, CPUTensorsMade()
    with made:
        output = net(x)
        loss_fn(output, [target] * len(output)).backward()
    assert made.ops == [] and x._version == version
    assert all(p.grad is not None for p in net.parameters())  # the whole step ran
