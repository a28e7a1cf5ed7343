"""Classifier heads."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.ops import FeatureShape, Op, Site, register
from archdsl.blocks.layers import linear_flops
from archdsl.blocks.norms import NormName, make_norm, norm_flops


class HeadOp(Op):
    role: ClassVar[str] = "head"
    classes: PositiveInt = 1000
    """classifier outputs"""

    def output_shape(self, site: Site) -> FeatureShape:
        return FeatureShape(self.classes, 1, 1)


class PoolLinearModule(nn.Module):
    def __init__(self, channels: int, classes: int, norm: NormName | None):
        super().__init__()
        self.norm = make_norm(norm, channels) if norm else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.norm(x)).flatten(1))


@register
class PoolLinear(HeadOp):
    """Optional norm, global average pool, linear classifier."""

    op: Literal["pool_linear"] = "pool_linear"
    norm: NormName | None = None
    """a norm before pooling (none when null)"""

    def flops(self, site: Site) -> int:
        shape = site.in_shape
        return (norm_flops(self.norm, shape) if self.norm else 0) + shape.numel + linear_flops(shape.channels, self.classes)

    def build(self, site: Site) -> nn.Module:
        return PoolLinearModule(site.in_shape.channels, self.classes, self.norm)
