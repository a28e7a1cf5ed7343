"""The norms a block, stem or head can name (`norm: group_norm`), each with its FLOP rule.

Tensors between nodes are NCHW; `layer_norm` normalises each pixel over its channels (the
token LayerNorm of ViTs), `group_norm` is GroupNorm(1, C), which normalises each sample over
C, H and W jointly (CloFormer's "LN"). A norm whose epsilon differs from the default 1e-5 is
written `{name: layer_norm, eps: 1.0e-6}` (PVT-style models such as SG-Former use 1e-6).
"""

from __future__ import annotations

from typing import Literal, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from archdsl.ops import FeatureShape

NormKind = Literal["layer_norm", "group_norm", "batch_norm"]
DEFAULT_EPS = 1e-5


class NormWithEps(BaseModel):
    """A norm with its epsilon given: `{name: layer_norm, eps: 1.0e-6}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: NormKind
    """the norm: layer_norm, group_norm or batch_norm"""
    eps: PositiveFloat = DEFAULT_EPS
    """epsilon added to the variance"""


# what a spec may write wherever a norm is named: a bare name, or a name with its epsilon
NormName = Union[NormKind, NormWithEps]  # noqa: UP007


def norm_kind(norm: NormName) -> NormKind:
    return norm.name if isinstance(norm, NormWithEps) else norm


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(norm: NormName, channels: int) -> nn.Module:
    name = norm_kind(norm)
    eps = norm.eps if isinstance(norm, NormWithEps) else DEFAULT_EPS
    if name == "layer_norm":
        return ChannelLayerNorm(channels, eps=eps)
    if name == "group_norm":
        return nn.GroupNorm(1, channels, eps=eps)
    if name == "batch_norm":
        return nn.BatchNorm2d(channels, eps=eps)
    raise ValueError(f"unknown norm {name!r}")


def norm_flops(norm: NormName, shape: FeatureShape) -> int:
    # fvcore: layer/group norm with affine = 5 per element; batch norm in eval = 2 per element
    return shape.numel * (2 if norm_kind(norm) == "batch_norm" else 5)
