"""Each building block alone: shapes, the paper's invariants, the ablation switches."""
import pytest
import torch

from danie_nnunet.attention import HierarchicalAttention
from danie_nnunet.config import get_config
from danie_nnunet.context import ChannelSelfAttention, GlobalContextGate, position_chunks
from danie_nnunet.joint_preservation import JointPreservation, PredictionHeads


@pytest.mark.parametrize("kwargs", [
    {}, dict(order="spatial_first"), dict(dcal=False), dict(channel=False), dict(spatial=False),
    dict(dcal_gate="channel"), dict(dcal_gate="spatial"), dict(sa_kernel=1),
])
def test_hierarchical_attention_keeps_shape(kwargs):
    att = HierarchicalAttention(32, **kwargs)
    h = torch.randn(2, 32, 12, 10)
    out = att(h)
    assert out.shape == h.shape and torch.isfinite(out).all()


def _branch_by_branch(att, h):
    """Eq. 2-5 written one pooling branch at a time, each convolution on its own (the reference formulation)."""
    def branch(pool):
        x = h
        for step in att.steps:
            if step == "channel":
                pooled = x.amax(dim=(2, 3), keepdim=True) if pool == "max" else x.mean(dim=(2, 3), keepdim=True)
                x = torch.sigmoid(att.channel_att.mlp(pooled)) * x
            else:
                x = (att.spatial_max if pool == "max" else att.spatial_avg)(x) * x
        return x
    o_max, o_avg = branch("max"), branch("avg")
    return o_max + o_avg if att.calibration is None else att.calibration(h, o_max, o_avg)


@pytest.mark.parametrize("kwargs", [
    {}, dict(order="spatial_first"), dict(dcal=False), dict(channel=False), dict(spatial=False),
    dict(dcal_gate="channel"), dict(sa_kernel=1), dict(sa_kernel=3, ca_reduction=4),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_hierarchical_attention_runs_both_branches_at_once_as_the_same_function(kwargs, channels_last):
    # the branches share each step's convolution call (a batch of 2B for the MLP, one grouped conv for the two
    # spatial maps): outputs and gradients equal the branch-by-branch formulation, with each branch's own weights
    torch.manual_seed(0)
    att = HierarchicalAttention(16, **kwargs).double()
    with torch.no_grad():
        for p in att.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the two spatial convs (and w_max, w_avg) differ
    h = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_(True)
    out, ref = att(h), _branch_by_branch(att, h)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    params = [h] + list(att.parameters())
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), params)
    grads_ref = torch.autograd.grad((ref * weight).sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_hierarchical_attention_without_dcal_is_the_sum_of_the_branches():
    att = HierarchicalAttention(16, channel=False, spatial=False, dcal=False)
    h = torch.randn(1, 16, 8, 8)
    assert torch.equal(att(h), h + h)  # no attention at all: O_max = O_avg = h
    assert not any(p.numel() for p in att.parameters())


def test_dynamic_calibration_gates_the_original_features():
    att = HierarchicalAttention(16)
    with torch.no_grad():  # a gate of exactly 1 passes h through unchanged (Eq. 5)
        att.calibration.proj.weight.zero_()
        att.calibration.proj.bias.fill_(100.0)
    h = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(att(h), h)


def test_channel_self_attention_starts_as_identity():
    es = ChannelSelfAttention()
    assert es.gamma.item() == 0.0
    s = torch.randn(2, 8, 5, 7)
    assert torch.equal(es(s), s)


def test_channel_self_attention_is_danets_cam_formula():
    # DANet's code: softmax(max(E) - E) over the last axis, E = S S^T; ES writes it as softmax(-E) (shift-invariance)
    es = ChannelSelfAttention()
    with torch.no_grad():
        es.gamma.fill_(0.7)
    s = torch.randn(2, 8, 5, 7, requires_grad=True)
    q = s.double().reshape(2, 8, -1)
    energy = q @ q.transpose(1, 2)
    attn = torch.softmax(energy.amax(dim=-1, keepdim=True).expand_as(energy) - energy, dim=-1)
    ref = 0.7 * (attn @ q).reshape(2, 8, 5, 7) + s.double()
    out = es(s)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    grad, = torch.autograd.grad(out.square().sum(), s)
    grad_ref, = torch.autograd.grad(ref.square().sum(), s)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_self_attention_split_over_positions_is_the_same_function(channels_last):
    # 16 x 16 positions, 8 channels: ES sums its energy over 8 chunks of 32 positions (the split cuBLAS lacked)
    assert position_chunks(256, 8) == 8 and position_chunks(16384, 64) == 64 and position_chunks(1024, 256) == 1
    es = ChannelSelfAttention().double()
    with torch.no_grad():
        es.gamma.fill_(0.3)
    s = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    if channels_last:
        s = s.to(memory_format=torch.channels_last)
    s.requires_grad_()
    q = s.reshape(2, 8, -1)
    attn = torch.softmax(-(q @ q.transpose(1, 2)), dim=-1)
    ref = 0.3 * (attn @ q).reshape(2, 8, 16, 16) + s
    out = es(s)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    grad_s, grad_gamma = torch.autograd.grad(out, [s, es.gamma], g, retain_graph=True)
    torch.testing.assert_close(grad_s, torch.autograd.grad(ref, s, g)[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_gamma, (g * (attn @ q).reshape_as(ref)).sum().reshape(1).detach(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_channel_self_attention_is_finite_in_half_precision_autocast(dtype):
    es = ChannelSelfAttention()
    with torch.no_grad():
        es.gamma.fill_(1.0)
    # stage 1 of a 512 patch has 16,384 positions: the C x C energy overflows fp16 unless computed in fp32
    s = (torch.randn(1, 16, 128, 128) * 8).to(dtype)
    q = s.reshape(1, 16, -1)
    if dtype == torch.float16:
        assert not torch.isfinite(q @ q.transpose(1, 2)).all()  # what a half-precision ES would compute
    with torch.autocast("cpu", dtype=dtype):
        out = es(s)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), es(s.float()), atol=0.1, rtol=0.02)


def test_global_context_gate_is_a_multiplicative_channel_gate():
    eh = GlobalContextGate(16)
    h = torch.rand(2, 16, 6, 6) + 0.1
    ratio = eh(h) / h  # eh = W_g ⊙ h with W_g in (0, 1) per channel
    assert ((ratio > 0) & (ratio < 1)).all()
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))
    assert eh.mlp_scale.fc1.out_channels == 4  # P = C/4


@pytest.mark.parametrize("row", ["C.5", "C.1", "C.2", "A.1", "A.2"])
def test_joint_preservation_shapes(row):
    cfg = get_config(row, dims=(8, 16, 32, 64))
    jp = JointPreservation(cfg)
    sizes = [(16, 12), (8, 6), (4, 3), (2, 2)]  # odd sizes line up because upsampling is size-based
    s = [torch.randn(1, c, *hw) if cfg.use_sap else None for c, hw in zip(cfg.dims, sizes)]
    h = [torch.randn(1, c, *hw) if cfg.use_hap else None for c, hw in zip(cfg.dims, sizes)]
    j = jp(s, h)
    assert [tuple(t.shape) for t in j] == [(1, c, *hw) for c, hw in zip(cfg.dims, sizes)]


def test_prediction_heads_sum_to_y():
    heads = PredictionHeads((8, 16, 32, 64), 3, (1.0, 1.0, 1.0, 1.0))
    j = [torch.randn(1, c, 16 // 2 ** k, 16 // 2 ** k) for k, c in enumerate((8, 16, 32, 64))]
    y, *p = heads(j, (64, 64))
    assert all(t.shape == (1, 3, 64, 64) for t in [y, *p])
    torch.testing.assert_close(y, sum(p))


@pytest.mark.parametrize("small, size", [((16, 16), (512, 512)), ((7, 7), (224, 224)), ((8, 7), (256, 224)),
                                         ((3, 5), (17, 9))])
def test_bilinear_matrix_is_exactly_interpolate(small, size):
    from danie_nnunet.joint_preservation import bilinear_matrix
    x = torch.randn(2, 3, *small, dtype=torch.float64)
    mh, mw = (bilinear_matrix(n, m, torch.float64) for n, m in zip(small, size))
    reference = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(mh @ x @ mw.T, reference, atol=1e-12, rtol=0)


def test_matmul_heads_equal_interpolate_heads_values_and_gradients():
    dims, size = (8, 16, 32, 64), (64, 96)
    fast = PredictionHeads(dims, 3, (1.0,) * 4, size, "matmul").double()
    plain = PredictionHeads(dims, 3, (1.0,) * 4, size, "interpolate").double()
    plain.load_state_dict(fast.state_dict())  # same keys: the matrices are not saved
    assert set(fast.state_dict()) == set(plain.state_dict())
    j = [torch.randn(2, c, size[0] // 2 ** (k + 2), size[1] // 2 ** (k + 2), dtype=torch.float64,
                     requires_grad=True) for k, c in enumerate(dims)]
    out_fast, out_plain = fast(j, size), plain(j, size)
    for a, b in zip(out_fast, out_plain):  # float64: the same function up to rounding
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    grads = [torch.autograd.grad(sum(o.square().sum() for o in out), j) for out in (out_fast, out_plain)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-10)
    bigger = [torch.randn(1, c, 2 * t.shape[2], 2 * t.shape[3], dtype=torch.float64) for c, t in zip(dims, j)]
    torch.testing.assert_close(fast(bigger, (128, 192))[0], plain(bigger, (128, 192))[0])  # falls back
    fast32, j32 = fast.float(), [t.detach().float() for t in j]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # within bf16 tolerance under autocast
        torch.testing.assert_close(fast32(j32, size)[0].float(), out_plain[0].detach().float(), atol=0.1, rtol=0.02)


def test_hierarchical_attention_exports_with_a_dynamic_batch():
    # the branches share a batch of 2B; splitting it must not pin the batch size (the ONNX export's batch axis)
    att = HierarchicalAttention(16).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(att, (torch.randn(2, 16, 8, 8),), dynamic_shapes=({0: batch},))
    h = torch.randn(5, 16, 8, 8)
    torch.testing.assert_close(program.module()(h), att(h))
