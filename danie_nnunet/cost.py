"""Parameters and multiply-accumulates of a DANIE network, counted with torch's own FLOP counter.

The paper's "GFLOPs" are GMACs at 256x256 (spec §6): MACs = FlopCounterMode's FLOPs / 2. The network is built
and run on the meta device, so counting costs no memory and about a second at any size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Union

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import DANIEConfig
from .network import create_danie

PAPER_GMACS_256 = {"S": 13.29, "L": 26.55}  # Table 1, 3 input channels, 9 classes


@dataclass
class ModelCost:
    variant: str
    img_size: tuple
    params: int
    gmacs: float
    gmacs_by_part: Dict[str, float]
    params_by_part: Dict[str, int]

    def table(self) -> str:
        rows = ["| part | params (M) | GMACs |", "|---|---|---|"]
        for part in self.params_by_part:
            rows.append(f"| {part} | {self.params_by_part[part] / 1e6:.2f} | {self.gmacs_by_part.get(part, 0.0):.2f} |")
        rows.append(f"| **total** | **{self.params / 1e6:.2f}** | **{self.gmacs:.2f}** |")
        return "\n".join(rows)


def count_on_meta(build: Callable[[], torch.nn.Module], input_shape: Sequence[int]):
    """(network, FlopCounterMode) after one inference forward pass of `build()` on the meta device."""
    with torch.device("meta"):
        net = build().eval()
        x = torch.empty(*input_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return net, counter


def count_cost(variant: Union[str, DANIEConfig] = "L", img_size: Sequence[int] = (256, 256), in_chans: int = 3,
               num_classes: int = 9, **overrides) -> ModelCost:
    """Params and GMACs (batch 1, inference) of a DANIE network, with a per-part breakdown.

    The heads' upsampling is counted as F.interpolate (not counted, as in the paper), whichever implementation
    the configuration runs: the matmul form is the same function and not part of the architecture's cost.
    """
    overrides = {"head_upsample": "interpolate", **overrides}
    net, counter = count_on_meta(lambda: create_danie(variant, img_size, in_chans, num_classes, **overrides),
                                 (1, in_chans, *img_size))
    by_module = counter.get_flop_counts()
    parts = [name for name, module in net.named_children() if any(True for _ in module.parameters())]
    gmacs_by_part = {p: sum(by_module.get(f"DANIE.{p}", {}).values()) / 2e9 for p in parts}
    params_by_part = {p: sum(t.numel() for t in getattr(net, p).parameters()) for p in parts}
    name = variant.name if isinstance(variant, DANIEConfig) else variant
    return ModelCost(name, tuple(img_size), sum(t.numel() for t in net.parameters()),
                     counter.get_total_flops() / 2e9, gmacs_by_part, params_by_part)
