"""Model cost against the paper (its "GFLOPs" are GMACs at 256x256, 3 channels, 9 classes; spec §6)."""
import pytest

from danie_nnunet.cost import PAPER_GMACS_256, count_cost


@pytest.mark.parametrize("variant, gmacs, params_m", [("S", 13.25, 47.25), ("L", 26.50, 105.92)])
def test_cost_matches_the_paper(variant, gmacs, params_m):
    cost = count_cost(variant, (256, 256), 3, 9)
    assert abs(cost.gmacs / PAPER_GMACS_256[variant] - 1) < 0.05  # the acceptance bound
    assert cost.gmacs == pytest.approx(gmacs, abs=0.3)  # the spec's tighter sanity range
    assert cost.params / 1e6 == pytest.approx(params_m, abs=0.1)
    assert sum(cost.gmacs_by_part.values()) == pytest.approx(cost.gmacs, rel=1e-6)


def test_cost_at_native_nnunet_patch():
    cost = count_cost("S", (512, 512), 1, 14)  # spec §2.9: 52.97 GMACs with window 8
    assert cost.gmacs == pytest.approx(52.97, abs=0.1)
