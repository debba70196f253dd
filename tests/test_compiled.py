"""A compiled DANIE block computes what the eager one does under bf16 autocast (danie_nnunet/compiled.py)."""
import copy

import torch

from danie_nnunet.compiled import backward_outside_autocast
from danie_nnunet.context import ChannelSelfAttention


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
