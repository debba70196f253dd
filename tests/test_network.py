"""The assembled network: shapes for nnU-Net's patch sizes, deep supervision, input checks, compile-readiness."""
import pytest
import torch

from danie_nnunet import create_danie
from danie_nnunet.patch_size import partition_size, round_up_patch_size


@pytest.mark.parametrize("variant, size, in_chans, classes", [
    ("S", (224, 224), 1, 9),
    ("S", (256, 256), 3, 4),
    ("S", (256, 224), 1, 4),  # ACDC-like non-square patch, windows (8, 7)
    ("S", (512, 512), 1, 14),  # Synapse at nnU-Net's native 2d patch, window 8
    ("L", (256, 256), 1, 9),
    ("S", (64, 96), 2, 3),  # multi-modal input
])
def test_output_shapes(variant, size, in_chans, classes):
    net = create_danie(variant, size, in_chans, classes).eval()
    with torch.no_grad():
        y = net(torch.randn(1, in_chans, *size))
    assert isinstance(y, torch.Tensor) and y.shape == (1, classes, *size)


def test_deep_supervision_returns_y_then_four_full_resolution_heads():
    net = create_danie("S", (64, 64), 1, 4, deep_supervision=True).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, list) and len(out) == 5
        assert all(o.shape == (2, 4, 64, 64) for o in out)
        torch.testing.assert_close(out[0], out[1] + out[2] + out[3] + out[4])  # Eq. 12, alpha = 1
        net.deep_supervision = False  # what nnU-Net's predictor gets: y alone
        torch.testing.assert_close(net(x), out[0])


def test_three_channel_input_has_no_adapter():
    assert isinstance(create_danie("S", (64, 64), 3, 2).input_adapter, torch.nn.Identity)
    assert not isinstance(create_danie("S", (64, 64), 1, 2).input_adapter, torch.nn.Identity)


@pytest.mark.parametrize("size, hint", [((250, 250), "224 or 256"), ((512, 500), "480 or 512"),
                                        ((16, 64), "32 or 32"), ((64, 64, 64), "2D network")])
def test_invalid_patch_size_fails_at_construction_naming_valid_sizes(size, hint):
    with pytest.raises(ValueError, match=hint):
        create_danie("S", size, 1, 2)


def test_wrong_input_fails_with_a_clear_message():
    net = create_danie("S", (256, 256), 1, 2).eval()
    with pytest.raises(ValueError, match="built for"):
        net(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("dim, p", [(224, 7), (256, 8), (320, 5), (384, 6), (448, 7), (512, 8), (416, 13),
                                    (64, 2), (32, 1)])
def test_partition_rule(dim, p):
    assert partition_size(dim) == p


def test_round_up_patch_size():
    assert round_up_patch_size([56, 72]) == (64, 96)
    assert round_up_patch_size([512, 448]) == (512, 448)
    assert round_up_patch_size([20, 33]) == (32, 64)


@pytest.mark.parametrize("fast", [False, True])
def test_compiles_as_one_graph_without_breaks(fast):
    net = create_danie("S", (64, 64), 1, 4, deep_supervision=True)
    if fast:  # as the trainers run it: channels-last, recomputation, bf16 autocast (ES switches it off inside)
        net.set_channels_last()
        net.set_grad_checkpointing()
        net.set_cuda_graphs()  # as the trainers build it: switched off under torch.compile without a break
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
        explanation = torch._dynamo.explain(net)(torch.randn(2, 1, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    if fast:  # and as nnU-Net's predictor runs a compiled network: eval, inference mode, one tile
        torch._dynamo.reset()
        with torch.inference_mode():
            explanation = torch._dynamo.explain(net.eval())(torch.randn(1, 1, 64, 64))
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
