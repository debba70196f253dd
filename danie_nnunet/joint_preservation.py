"""Joint Preservation (paper §3.4, Eq. 10-12; spec §2.6-2.7): fuse the two streams and decode coarse to fine."""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import DANIEConfig
from .context import ChannelSelfAttention, GlobalContextGate
from .layers import ConvBlock, ConvBnAct


class StreamAggregation(nn.Module):
    """e_k = ES(s_k) + EH(h_k) (Eq. 10); ablations drop ES/EH or a stream, or concatenate the streams (C.1)."""

    def __init__(self, channels: int, cfg: DANIEConfig):
        super().__init__()
        self.es = ChannelSelfAttention() if cfg.use_es else None
        self.eh = GlobalContextGate(channels, cfg.eh_ratio) if cfg.use_eh else None
        self.concat = cfg.stream_fusion == "concat"

    def forward(self, s: Optional[torch.Tensor], h: Optional[torch.Tensor]) -> torch.Tensor:
        if s is not None and self.es is not None:
            s = self.es(s)
        if h is not None and self.eh is not None:
            h = self.eh(h)
        if s is None or h is None:
            return h if s is None else s
        return torch.cat([s, h], dim=1) if self.concat else s + h


class JointPreservation(nn.Module):
    """j_4 = ConvBlock(e_4); j_k = ConvBlock(Cat[e_k, u_k]), u_k = CBA(Up(j_{k+1})) for k = 3, 2, 1 (Eq. 11).

    The paper's j_{i-1} is the next-coarser level (CASCADE numbers its decoder deepest-first); u_k brings it to
    the size and channels of e_k with CASCADE's up_conv (A18). `forward` returns [j_1, j_2, j_3, j_4] (fine
    to coarse).
    """

    def __init__(self, cfg: DANIEConfig):
        super().__init__()
        dims, f = cfg.dims, cfg.fused_channel_factor
        self.aggregations = nn.ModuleList(StreamAggregation(d, cfg) for d in dims)
        self.up_convs = nn.ModuleList(ConvBnAct(dims[k + 1], dims[k]) for k in range(3))
        merged = [(f + 1) * d if cfg.jp_merge == "concat" else d for d in dims[:3]]
        # A20: the deepest level has no coarser partner; optionally concatenate a 1x1 projection of e_4
        self.deepest_partner = nn.Conv2d(f * dims[3], f * dims[3], 1) if cfg.deepest_self_concat else None
        deepest_in = f * dims[3] * (2 if cfg.deepest_self_concat else 1)
        self.blocks = nn.ModuleList([ConvBlock(merged[k], dims[k]) for k in range(3)]
                                    + [ConvBlock(deepest_in, dims[3])])
        self.concat = cfg.jp_merge == "concat"
        self.residual = cfg.jp_residual
        self.upsample_mode = cfg.jp_upsample

    def _upsample(self, j: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.upsample_mode == "bilinear":
            return F.interpolate(j, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(j, size=size, mode="nearest")

    def forward(self, sap_features: Sequence[Optional[torch.Tensor]],
                hap_features: Sequence[Optional[torch.Tensor]]) -> List[torch.Tensor]:
        e = [agg(s, h) for agg, s, h in zip(self.aggregations, sap_features, hap_features)]
        deepest = e[3] if self.deepest_partner is None else torch.cat([e[3], self.deepest_partner(e[3])], 1)
        j = [self.blocks[3](deepest)]
        for k in (2, 1, 0):
            u = self.up_convs[k](self._upsample(j[0], e[k].shape[-2:]))
            merged = torch.cat([e[k], u], dim=1) if self.concat else e[k] + u
            jk = self.blocks[k](merged)
            j.insert(0, jk + u if self.residual else jk)  # C.1 "Res": parameter-free (spec §4 note)
        return j


def bilinear_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_out, n_in) matrix M with M @ v == F.interpolate(v, n_out, mode='linear', align_corners=False)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype)


def with_current_head_names(state_dict: Mapping[str, torch.Tensor], prefix: str = "heads.") -> Mapping:
    """`state_dict` with the heads' keys of checkpoints written before 2026-12-08 (`heads.heads.K.*`) under their
    present name (`heads.seg_layers.K.*`); the same object where there are none."""
    old = prefix + "heads."
    if not any(key.startswith(old) for key in state_dict):
        return state_dict
    renamed = OrderedDict((prefix + "seg_layers." + key[len(old):] if key.startswith(old) else key, value)
                          for key, value in state_dict.items())
    if hasattr(state_dict, "_metadata"):  # torch's per-module versions, which load_state_dict reads
        renamed._metadata = state_dict._metadata
    return renamed


class PredictionHeads(nn.Module):
    """p_k = Up(Conv1x1(j_k)) to the input size, bilinear (A22); y = sum_k alpha_k p_k (Eq. 12).

    Bilinear upsampling is separable, so for the sizes the network was built for it runs as two matmuls with
    fixed interpolation matrices, Up(l) = M_h @ l @ M_w^T: the same function as F.interpolate (equal to float64
    precision), whose backward on GPUs is an atomics-bound scatter while this one is two GEMMs (issue 4).
    Other input sizes fall back to F.interpolate. The matrices are not part of the state dict.
    """

    def __init__(self, dims: Sequence[int], num_classes: int, weights: Sequence[float],
                 img_size: Optional[Sequence[int]] = None, upsample: str = "matmul"):
        super().__init__()
        # nnU-Net's name for the layers that give the segmentation maps: its transfer of pretrained weights
        # (`nnUNetv2_train ... -pretrained_weights CHECKPOINT`) skips keys containing ".seg_layers.", so a DANIE
        # trained on one dataset fine-tunes on another with other classes
        self.seg_layers = nn.ModuleList(nn.Conv2d(d, num_classes, 1, bias=True) for d in dims)
        self.register_load_state_dict_pre_hook(self._load_old_names)
        self.weights = tuple(float(w) for w in weights)
        self.sizes = []
        if upsample == "matmul" and img_size is not None:
            for k in range(len(dims)):
                stride = 2 ** (k + 2)
                small = (img_size[0] // stride, img_size[1] // stride)
                self.register_buffer(f"up_h{k}", bilinear_matrix(small[0], img_size[0]), persistent=False)
                self.register_buffer(f"up_w{k}", bilinear_matrix(small[1], img_size[1]).T.contiguous(),
                                     persistent=False)
                self.sizes.append((small, tuple(img_size)))

    @staticmethod
    def _load_old_names(module, state_dict, prefix, *args) -> None:
        # torch hands its own copy of the state dict to the hooks, so it is renamed in place
        renamed = with_current_head_names(state_dict, prefix)
        if renamed is not state_dict:
            state_dict.clear()
            state_dict.update(renamed)

    def _upsample(self, k: int, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if k < len(self.sizes) and self.sizes[k] == (tuple(logits.shape[-2:]), tuple(size)):
            return getattr(self, f"up_h{k}") @ logits @ getattr(self, f"up_w{k}")
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, j: Sequence[torch.Tensor], size: Sequence[int]) -> List[torch.Tensor]:
        """Returns [y, p_1, p_2, p_3, p_4], all at `size`."""
        p = [self._upsample(k, head(jk), size) for k, (head, jk) in enumerate(zip(self.seg_layers, j))]
        y = sum(w * pk for w, pk in zip(self.weights, p))
        return [y, *p]
