"""MaxViT's attention with q, k, v split first (danie_nnunet/qkv_split.py): the same function to the bit, one copy
of the qkv gradient fewer, eager and compiled."""
import copy
from collections import Counter
from functools import partial

import pytest
import timm
import torch
from timm.layers import RelPosBiasTf
from timm.models.maxxvit import AttentionCl
from torch.utils._python_dispatch import TorchDispatchMode

from bench_scripts import load_bench_script
from danie_nnunet import create_danie
from danie_nnunet.patch_size import partition_sizes
from danie_nnunet.qkv_split import AttentionClSplitFirst, split_qkv_first

WINDOW = (4, 4)


def _stock_and_split(head_first: bool, rel_pos: bool = True, dtype=torch.float64):
    torch.manual_seed(0)
    stock = AttentionCl(64, dim_head=32, head_first=head_first,
                        rel_pos_cls=partial(RelPosBiasTf, window_size=WINDOW) if rel_pos else None).to(dtype)
    with torch.no_grad():  # timm starts the bias table at zero: make it matter
        for p in stock.parameters():
            p.normal_(0, 0.2)
    split = copy.deepcopy(stock)
    assert split_qkv_first(split) == 1 and type(split) is AttentionClSplitFirst
    return stock, split


def _step(attention, x, shared_rel_pos=None):
    x = x.clone().requires_grad_(True)
    y = attention(x, shared_rel_pos)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return [y, x.grad] + [p.grad for p in attention.parameters()]


@pytest.mark.parametrize("head_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_same_outputs_and_gradients_to_the_bit(head_first, dtype):
    stock, split = _stock_and_split(head_first, dtype=dtype)
    x = torch.randn(3, WINDOW[0] * WINDOW[1], 64, dtype=dtype)  # windows of tokens, channels last
    for a, b in zip(_step(stock, x), _step(split, x)):
        assert torch.equal(a, b)


def test_a_shared_relative_position_bias_and_timms_unfused_path_are_kept():
    stock, split = _stock_and_split(False, rel_pos=False)
    x = torch.randn(2, 16, 64, dtype=torch.float64)
    bias = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    for a, b in zip(_step(stock, x, bias), _step(split, x, bias)):
        assert torch.equal(a, b)
    stock.fused_attn = split.fused_attn = False  # timm's explicit softmax path: split defers to it
    for a, b in zip(_step(stock, x, bias), _step(split, x, bias)):
        assert torch.equal(a, b)


def test_each_maxvit_attention_of_danie_splits_first_with_timms_state_dict():
    for variant, model in (("S", "maxvit_tiny_tf_224"), ("L", "maxvit_small_tf_224")):
        net = create_danie(variant, (64, 64), 1, 4)
        kinds = [type(m) for m in net.modules() if isinstance(m, AttentionCl)]
        assert kinds == [AttentionClSplitFirst] * 22
        window = partition_sizes((64, 64))
        stock = timm.create_model(model, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
                                  img_size=(64, 64), transformer_window_size=window, transformer_grid_size=window)
        sap = next(m for m in net.modules() if type(m) is type(stock))
        assert list(sap.state_dict()) == list(stock.state_dict())
        stock.load_state_dict(sap.state_dict())  # checkpoints go both ways


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


VIEWS = {"view", "_unsafe_view", "transpose", "t", "permute", "squeeze", "expand", "detach"}


def _backward_ops(attention):
    """The ATen operators of `attention`'s backward, in order."""
    x = torch.randn(3, 16, 64, dtype=torch.float64, requires_grad=True)
    y = attention(x)
    with _Ops() as ops:
        y.sum().backward()
    return ops.names


def test_the_eager_backward_copies_the_qkv_gradient_once():
    stock, split = _stock_and_split(False)
    stock_ops, split_ops = (Counter(op for op in _backward_ops(a) if op not in VIEWS) for a in (stock, split))
    assert stock_ops - split_ops == Counter(clone=1) and not split_ops - stock_ops  # the transposed stack's copy


def test_the_compiled_backward_launches_one_kernel_fewer_and_moves_less():
    """Inductor's Triton code for a GPU, generated and counted on the CPU (bench/gpu_launches.py), bf16 autocast."""
    script = load_bench_script("gpu_launches")
    counted = {}
    for name, attention in zip(("stock", "split"), _stock_and_split(False, dtype=torch.float32)):
        torch._dynamo.reset()
        compiled = torch.compile(attention)
        x = torch.randn(64, 16, 64, requires_grad=True)
        with script.gpu_code_on_cpu() as launches:
            for _ in range(2):  # the first compiles; the second is counted
                launches.clear()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = compiled(x)
                y.float().square().mean().backward()
            counted[name] = (sum(launches.values()),
                             sum(n * launches.gigabytes[kernel] for kernel, n in launches.items()))
    (stock_n, stock_gb), (split_n, split_gb) = counted["stock"], counted["split"]
    assert split_n == stock_n - 1
    assert split_gb < stock_gb
