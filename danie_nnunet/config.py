"""DANIEConfig: one frozen dataclass describes a DANIE network; presets for S, L and every ablation row.

Every free choice of the paper that the spec (`danie-spec.md` §3) resolves is a field here, so each row of
Tables 5-7 is a configuration, not a code fork (spec §4).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Tuple

STREAM_FUSIONS = ("add", "concat")
JP_MERGES = ("concat", "add")
HA_ORDERS = ("channel_first", "spatial_first")
DCAL_GATES = ("full", "channel", "spatial")
HAP_EMBEDS = ("fullres", "light")
INPUT_ADAPTERS = ("conv", "timm")
JP_UPSAMPLES = ("nearest", "bilinear")
HEAD_UPSAMPLES = ("matmul", "interpolate")


@dataclass(frozen=True)
class DANIEConfig:
    """Architecture of one DANIE network (input size, channels and classes are given to the builder)."""

    name: str = "L"
    # SAP stream: timm MaxViT, stage dims must equal `dims` (spec §2.2, A2)
    sap_model: str = "maxvit_small_tf_224"
    dims: Tuple[int, int, int, int] = (96, 192, 384, 768)
    drop_path_rate: float = 0.0  # A26
    # 1-channel / multi-channel input (A5): 'conv' = learnable 1x1 conv + BN + ReLU to 3 channels, shared by
    # both streams (CASCADE/MERIT); 'timm' = both streams take Cin channels (timm sums the RGB stem kernels)
    input_adapter: Literal["conv", "timm"] = "conv"
    # HAP stream (spec §2.3)
    hap_embed: Literal["fullres", "light"] = "fullres"  # A6
    hap_depths: Tuple[int, int, int, int] = (1, 1, 1, 1)  # A9: HierarchicalAttention + ConvBlock units per stage
    ha_channel: bool = True  # Eq. 2 (Table 5 A.4 switches it off)
    ha_spatial: bool = True  # Eq. 3 (Table 5 A.3 switches it off)
    ha_order: Literal["channel_first", "spatial_first"] = "channel_first"  # Table 6
    dcal: bool = True  # Eq. 4-5 dynamic calibration (Table 6)
    dcal_gate: Literal["full", "channel", "spatial"] = "full"  # A13
    sa_kernel: int = 7  # A10: the paper's text says 1
    ca_reduction: int = 16  # A11
    ca_min_hidden: int = 8
    # streams and Joint Preservation (spec §2.4-2.6, Table 7)
    use_sap: bool = True
    use_hap: bool = True
    use_es: bool = True  # Eq. 6-7
    use_eh: bool = True  # Eq. 8-9
    eh_ratio: float = 0.25  # A16
    stream_fusion: Literal["add", "concat"] = "add"  # Eq. 10
    jp_merge: Literal["concat", "add"] = "concat"  # Eq. 11
    jp_residual: bool = False  # Table 7 C.1 "Res": j_k += u_k
    deepest_self_concat: bool = False  # A20
    jp_upsample: Literal["nearest", "bilinear"] = "nearest"  # A21
    head_weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # Eq. 12 alphas, fine to coarse
    # implementation only, same function: the heads' bilinear upsampling as two matmuls or F.interpolate
    head_upsample: Literal["matmul", "interpolate"] = "matmul"

    def __post_init__(self):
        def check(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"DANIEConfig '{self.name}': {msg}")

        for name, allowed in (("stream_fusion", STREAM_FUSIONS), ("jp_merge", JP_MERGES),
                              ("ha_order", HA_ORDERS), ("dcal_gate", DCAL_GATES), ("hap_embed", HAP_EMBEDS),
                              ("input_adapter", INPUT_ADAPTERS), ("jp_upsample", JP_UPSAMPLES),
                              ("head_upsample", HEAD_UPSAMPLES)):
            check(getattr(self, name) in allowed, f"{name}={getattr(self, name)!r}, expected one of {allowed}")
        check(len(self.dims) == 4 and all(d > 0 for d in self.dims), f"dims must be 4 positive ints, got {self.dims}")
        check(len(self.hap_depths) == 4 and all(d >= 1 for d in self.hap_depths),
              f"hap_depths must be 4 ints >= 1, got {self.hap_depths}")
        check(len(self.head_weights) == 4, f"head_weights must have 4 entries, got {self.head_weights}")
        check(self.use_sap or self.use_hap, "at least one of use_sap / use_hap must be on")
        check(self.use_sap or not self.use_es, "use_es needs the SAP stream (use_sap=True)")
        check(self.use_hap or not self.use_eh, "use_eh needs the HAP stream (use_hap=True)")
        check(self.sa_kernel % 2 == 1, f"sa_kernel must be odd, got {self.sa_kernel}")
        check(not (self.jp_merge == "add" and self.fused_channel_factor != 1),
              "jp_merge='add' needs e_k with C_k channels; use stream_fusion='add' or jp_merge='concat'")

    @property
    def fused_channel_factor(self) -> int:
        """Channels of e_k in units of C_k: 2 when both streams are concatenated (Table 7 C.1), else 1."""
        return 2 if (self.use_sap and self.use_hap and self.stream_fusion == "concat") else 1

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "DANIEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DANIEConfig fields {sorted(unknown)}; known fields: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


DANIE_L = DANIEConfig()
DANIE_S = replace(DANIE_L, name="S", sap_model="maxvit_tiny_tf_224", dims=(64, 128, 256, 512))
VARIANTS = {"S": DANIE_S, "L": DANIE_L}

# Ablation rows of Tables 5, 6 and 7 (spec §4); defined on top of DANIE-L, the paper's ablation model.
_C2_ADD = dict(use_es=False, use_eh=False, jp_merge="add")
ABLATION_SWITCHES = {
    "A.1": dict(use_hap=False, use_es=False, use_eh=False, jp_merge="add"),  # w/o hierarchical attention
    "A.2": dict(use_sap=False, use_es=False, use_eh=False, jp_merge="add"),  # w/o self-attention
    "A.3": dict(_C2_ADD, ha_spatial=False),  # w/o spatial attention
    "A.4": dict(_C2_ADD, ha_channel=False),  # w/o channel attention
    "A.5": dict(_C2_ADD),  # DAE with add fusion (= C.2)
    # Table 6 ran on Table 5's add-fusion setting (the paper's B.4 Dice, 82.97, is A.5's and C.2's): spec §4
    # put the B rows on the full model, which that number contradicts
    "B.1": dict(_C2_ADD, ha_order="spatial_first", dcal=False),
    "B.2": dict(_C2_ADD, ha_order="spatial_first", dcal=True),
    "B.3": dict(_C2_ADD, ha_order="channel_first", dcal=False),
    "B.4": dict(_C2_ADD),  # channel first + Dcal = A.5 = C.2
    "C.1": dict(use_es=False, use_eh=False, stream_fusion="concat", jp_merge="concat", jp_residual=True),
    "C.2": dict(_C2_ADD),
    "C.3": dict(use_es=False),  # EH + Add
    "C.4": dict(use_eh=False),  # ES + Add
    "C.5": dict(),  # Joint Preservation = default
}
ABLATION_DESCRIPTIONS = {
    "A.1": "w/o hierarchical-attention", "A.2": "w/o self-attention", "A.3": "w/o spatial att",
    "A.4": "w/o channel att", "A.5": "DANIE (DAE, add fusion)", "B.1": "Spatial + Channel, no Dcal",
    "B.2": "Spatial + Channel, Dcal", "B.3": "Channel + Spatial, no Dcal", "B.4": "Channel + Spatial, Dcal",
    "C.1": "Concat + Res", "C.2": "Add", "C.3": "EH + Add", "C.4": "ES + Add", "C.5": "Joint Preservation",
}


def ablation_config(row: str, base: DANIEConfig = DANIE_L) -> DANIEConfig:
    """Configuration of one ablation row ('A.1' ... 'C.5') on top of `base` (DANIE-L by default)."""
    if row not in ABLATION_SWITCHES:
        raise KeyError(f"unknown ablation row {row!r}; rows are {sorted(ABLATION_SWITCHES)}")
    return replace(base, name=f"{base.name}-{row}", **ABLATION_SWITCHES[row])


def get_config(variant: str | DANIEConfig, **overrides) -> DANIEConfig:
    """'S', 'L', an ablation row such as 'A.3' (on DANIE-L) or 'S/A.3', or a DANIEConfig; plus field overrides."""
    if isinstance(variant, DANIEConfig):
        cfg = variant
    elif variant in VARIANTS:
        cfg = VARIANTS[variant]
    elif variant in ABLATION_SWITCHES:
        cfg = ablation_config(variant)
    elif "/" in variant and variant.split("/", 1)[0] in VARIANTS:
        base, row = variant.split("/", 1)
        cfg = ablation_config(row, VARIANTS[base])
    else:
        raise KeyError(f"unknown DANIE variant {variant!r}; use 'S', 'L', an ablation row "
                       f"({', '.join(sorted(ABLATION_SWITCHES))}) or 'S/<row>'")
    return replace(cfg, **overrides) if overrides else cfg
