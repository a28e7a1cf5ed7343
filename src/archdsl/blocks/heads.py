"""Classifier heads, and the protocol every head module follows so that a model can be
fine-tuned (`reset_classifier`), used headless (`classes: 0`) or asked for its pre-logits."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import NonNegativeInt
from torch import nn

from archdsl.blocks.layers import linear_flops
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import FeatureShape, Op, Site, register


def classifier(features: int, classes: int) -> nn.Module:
    """The last layer of every head: a linear classifier, or none when `classes` is 0 (headless:
    the head then returns its pooled features)."""
    return nn.Linear(features, classes) if classes else nn.Identity()


class HeadModule(nn.Module):
    """A head: `pre_logits(x)` maps the last stage's map to a (B, num_features) vector, and
    `fc` (built by `classifier`, last, so that seeded initialisation keeps the authors' order)
    turns it into logits."""

    fc: nn.Module

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(x))


class HeadOp(Op):
    """A head op; `classes: 0` builds it without its classifier."""

    role: ClassVar[str] = "head"
    classes: NonNegativeInt = 1000
    """classifier outputs (0: none, a headless model returning pooled features)"""

    def num_features(self, site: Site) -> int:
        """Width of the pooled features the classifier reads."""
        return site.in_shape.channels

    def output_shape(self, site: Site) -> FeatureShape:
        return FeatureShape(self.classes or self.num_features(site), 1, 1)

    def classifier_flops(self, site: Site) -> int:
        return linear_flops(self.num_features(site), self.classes)


class PoolLinearModule(HeadModule):
    def __init__(self, channels: int, classes: int, norm: NormName | None):
        super().__init__(channels)
        self.norm = make_norm(norm, channels) if norm else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = classifier(channels, classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(x)).flatten(1)


@register
class PoolLinear(HeadOp):
    """Optional norm, global average pool, linear classifier."""

    op: Literal["pool_linear"] = "pool_linear"
    norm: NormName | None = None
    """a norm before pooling (none when null)"""

    def flops(self, site: Site) -> int:
        shape = site.in_shape
        return (norm_flops(self.norm, shape) if self.norm else 0) + shape.numel + self.classifier_flops(site)

    def build(self, site: Site) -> nn.Module:
        return PoolLinearModule(site.in_shape.channels, self.classes, self.norm)
