"""Every ablation row of Tables 5-7 builds, trains a step, and leaves no parameter without a gradient (DDP)."""
import pytest
import torch

from danie_nnunet import create_danie
from danie_nnunet.config import ABLATION_SWITCHES


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("row", sorted(ABLATION_SWITCHES))
def test_ablation_row_trains_a_step_with_every_parameter_used(row):
    torch.manual_seed(0)
    net = create_danie(row, (64, 64), 1, 3, deep_supervision=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, target = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    y, *heads = net(x)
    loss = sum(torch.nn.functional.cross_entropy(p, target) for p in heads)  # y has weight 0, as in training
    loss.backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, f"{row}: parameters without gradient break DDP(find_unused_parameters=False): {unused}"
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert torch.isfinite(loss)


def test_switches_change_the_network_in_the_expected_direction():
    size = dict(img_size=(64, 64), in_chans=1, num_classes=9)
    full, c2, c1 = (create_danie(r, **size) for r in ("C.5", "C.2", "C.1"))
    a1, a2 = create_danie("A.1", **size), create_danie("A.2", **size)
    assert a1.hap is None and a1.sap is not None and a2.sap is None and a2.hap is not None
    assert n_params(a1) < n_params(c2) and n_params(a2) < n_params(c2)
    # C.1 concatenates the streams: 2*9*C_k^2 more weights on the first JP conv of levels 1-3, 9*C_4^2 at level 4
    dims = full.cfg.dims
    assert n_params(c1) - n_params(c2) == sum(18 * d * d for d in dims[:3]) + 9 * dims[3] ** 2
    # no Dcal removes the C x C gate convs and the two scalars (Table 6 rows are on C.2's add fusion)
    b3 = create_danie("B.3", **size)
    assert n_params(c2) - n_params(b3) == sum(d * d + d + 2 for d in dims)
    # ES is parameter-free apart from gamma; EH adds the GC blocks
    c3, c4 = create_danie("C.3", **size), create_danie("C.4", **size)
    assert n_params(full) - n_params(c3) == 4
    assert n_params(c4) < n_params(full)
