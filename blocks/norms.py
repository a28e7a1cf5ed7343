"""The norms a block, stem or head can name (`norm: group_norm`), each with its FLOP rule.

Tensors between nodes are NCHW; `layer_norm` normalises each pixel over its channels (the
token LayerNorm of ViTs), `group_norm` is GroupNorm(1, C), which normalises each sample over
C, H and W jointly (CloFormer's "LN").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops import FeatureShape

NormName = Literal["layer_norm", "group_norm", "batch_norm"]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(name: NormName, channels: int) -> nn.Module:
    if name == "layer_norm":
        return ChannelLayerNorm(channels, eps=1e-5)
    if name == "group_norm":
        return nn.GroupNorm(1, channels, eps=1e-5)
    if name == "batch_norm":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {name!r}")


def norm_flops(name: NormName, shape: FeatureShape) -> int:
    # fvcore: layer/group norm with affine = 5 per element; batch norm in eval = 2 per element
    return shape.numel * (2 if name == "batch_norm" else 5)
