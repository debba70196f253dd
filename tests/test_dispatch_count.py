"""What a training step dispatches (dispatch_count.py, `danie-nnunet bench --launches`): counted exactly, attention
as CUDA's one kernel each way, and the function unchanged by counting."""
import torch
import torch.nn.functional as F
from timm.models.maxxvit import AttentionCl
from torch import nn

from danie_nnunet import bench
from danie_nnunet.attention import HierarchicalAttention
from danie_nnunet.dispatch_count import count_dispatch, count_training_step


def _attention_inputs(device):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, device=device, requires_grad=True) for _ in range(3))
    bias = torch.randn(4, 16, 16, device=device, requires_grad=True)  # a relative position bias, as MaxViT's
    return q, k, v, bias


def test_attention_counts_as_one_call_each_way_and_keeps_its_values_and_gradients():
    inputs = _attention_inputs("cpu")
    grad = torch.randn(2, 4, 16, 8)
    plain = F.scaled_dot_product_attention(*inputs[:3], attn_mask=inputs[3])
    plain_grads = torch.autograd.grad(plain, inputs, grad)
    counted = {}

    def step():
        out = F.scaled_dot_product_attention(*inputs[:3], attn_mask=inputs[3])
        counted["out"], counted["grads"] = out, torch.autograd.grad(out, inputs, grad)

    counts = count_dispatch(step)
    # off CUDA SDPA runs its math path (matrix products and a softmax); CUDA launches one kernel each way
    assert counts["attention"] == 2 and counts["matmul"] == 0 and counts["operators"] == 2
    torch.testing.assert_close(counted["out"], plain)
    for a, b in zip(counted["grads"], plain_grads):
        torch.testing.assert_close(a, b)


def test_a_backward_counted_apart_from_its_forward_counts_its_attention_there():
    q, k, v, bias = _attention_inputs("meta")
    forward = {}
    forward_counts = count_dispatch(lambda: forward.update(
        out=F.scaled_dot_product_attention(q, k, v, attn_mask=bias)))
    backward_counts = count_dispatch(lambda: forward["out"].sum().backward())
    assert forward_counts["attention"] == 1 and backward_counts["attention"] == 1
    assert backward_counts["matmul"] == 0 and forward_counts["matmul"] == 0


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return [self.linear(self.conv(x).permute(0, 2, 3, 1)).sum(dim=(1, 2))]


def test_a_training_step_counts_each_library_call_forward_and_backward():
    net = _Toy()
    parts = count_training_step(net, lambda out, target: (out[0] - target).square().mean(), torch.randn(2, 1, 8, 8),
                                torch.zeros(2, 4))
    assert parts["forward"]["convolution"] == 1 and parts["backward"]["convolution"] == 1
    # the linear layer: one product forward, two backward (its input's and its weight's gradients)
    assert parts["forward"]["matmul"] == 1 and parts["backward"]["matmul"] == 2
    assert parts["loss"]["convolution"] + parts["loss"]["matmul"] == 0
    assert all(p.grad is None for p in net.parameters())  # counting leaves no gradients behind


def test_casts_and_allocations_are_counted_among_the_operators():
    linear, x = nn.Linear(4, 4), torch.randn(2, 4)

    def step():
        torch.empty(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear(x)  # autocast casts the input, the weight and the bias, then one matrix product

    counts = count_dispatch(step)
    assert counts["casts"] == 3 and counts["allocations"] == 1 and counts["matmul"] == 1
    assert counts["operators"] == 5


def test_launch_table_counts_every_convolution_and_attention_of_a_danie_step(capsys):
    from danie_nnunet.cli import main
    step, x = bench.danie_training_step("S", "plain", False, 64, 2, 1, 9, torch.device("meta"), None)
    conv_calls = []
    for m in step.net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda *_: conv_calls.append(1))
    parts = count_training_step(step.net, step.loss_fn, x, step.targets)
    attention_modules = sum(isinstance(m, AttentionCl) for m in step.net.modules())
    # each HierarchicalAttention's two spatial convolutions run as one grouped F.conv2d, which no module hook sees
    spatial_pairs = sum(isinstance(m, HierarchicalAttention) and m.spatial_max is not None
                        for m in step.net.modules())
    assert spatial_pairs == 4
    convolutions = len(conv_calls) + spatial_pairs
    assert parts["forward"]["convolution"] == convolutions == parts["backward"]["convolution"]
    assert parts["forward"]["attention"] == attention_modules == parts["backward"]["attention"] > 0

    assert main(["bench", "--launches", "--device", "meta", "--configs", "64x2"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| nnU-Net") or line.startswith("| DANIE")]
    assert [r[0] for r in rows] == ["nnU-Net 2D PlainConvUNet", "DANIE-S", "DANIE-L"]
    assert rows[0][-1] == "1.0x" and rows[1][5] == str(2 * convolutions) and rows[1][7] == str(2 * attention_modules)
    for row in rows:
        assert int(row[4]) == sum(int(c) for c in row[1:4])  # the step is forward + loss + backward
        assert int(row[8]) == sum(int(c) for c in row[5:8])

    assert main(["bench", "--launches", "--device", "meta", "--configs", "64x2", "--models", "S,U-Net"]) == 0
    later = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
             if line.startswith("| nnU-Net") or line.startswith("| DANIE")]
    assert later == [rows[1], rows[0]]  # the ratio is against the U-Net wherever --models puts it


def test_the_meta_device_only_counts():
    from danie_nnunet.cli import main
    assert main(["bench", "--device", "meta", "--configs", "64x1", "--models", "S"]) == 2

