"""Classifier heads, and the protocol every head module follows so that a model can be
fine-tuned (`reset_classifier`), used headless (`classes: 0`) or asked for its pre-logits."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import NonNegativeInt
from torch import nn

from archdsl.blocks.layers import linear_flops
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import FeatureShape, Op, OpCheckError, Site, register


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
    def __init__(self, channels: int, classes: int, norm: NormName | None, norm_pooled: bool = False):
        super().__init__(channels)
        self.norm = make_norm(norm, channels) if norm else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = classifier(channels, classes)
        self.norm_pooled = norm_pooled

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_pooled:
            return self.norm(self.pool(x)).flatten(1)
        return self.pool(self.norm(x)).flatten(1)


@register
class PoolLinear(HeadOp):
    """Optional norm, global average pool, linear classifier; `norm_at: pooled` normalises the
    pooled features instead of the map (ConvNeXt's head)."""

    op: Literal["pool_linear"] = "pool_linear"
    norm: NormName | None = None
    """a norm before pooling, or after it with norm_at: pooled (none when null)"""
    norm_at: Literal["map", "pooled"] = "map"
    """where the norm runs: on the last stage's map, or on the pooled features"""

    def flops(self, site: Site) -> int:
        shape = site.in_shape
        normed = shape if self.norm_at == "map" else FeatureShape(shape.channels, 1, 1)
        return (norm_flops(self.norm, normed) if self.norm else 0) + shape.numel + self.classifier_flops(site)

    def build(self, site: Site) -> nn.Module:
        return PoolLinearModule(site.in_shape.channels, self.classes, self.norm, self.norm_at == "pooled")


class ClassTokenHeadModule(HeadModule):
    def __init__(self, channels: int, classes: int, norm: NormName | None):
        super().__init__(channels)
        self.norm = make_norm(norm, channels) if norm else nn.Identity()
        self.fc = classifier(channels, classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        # the class token as a 1x1 map, so that every norm applies (per token, as ViT's final norm)
        return self.norm(x.flatten(2)[:, :, :1].unsqueeze(-1)).flatten(1)


@register
class ClassTokenHead(HeadOp):
    """A norm and a linear classifier on token 0, the class token that an op with
    `class_token: true` puts first (no pooling): NomMer's head, ViT's (whose final norm runs on
    every token, of which only the class token's reaches the classifier)."""

    op: Literal["class_token_head"] = "class_token_head"
    capabilities = frozenset({"runs_on_tokens"})
    norm: NormName | None = "layer_norm"
    """the norm on the class token before the classifier (none when null)"""

    def check(self, site: Site) -> None:
        if site.in_shape.layout != "tokens":
            raise OpCheckError(
                f"class_token_head reads the class token, but the last stage outputs a {site.in_shape} map with none; "
                f"put one there (a stem or downsample with class_token: true: patch_embedding, conv_max_pool) or use "
                f"pool_linear"
            )

    def flops(self, site: Site) -> int:
        channels = site.in_shape.channels
        return (norm_flops(self.norm, FeatureShape(channels, 1, 1)) if self.norm else 0) + self.classifier_flops(site)

    def build(self, site: Site) -> nn.Module:
        return ClassTokenHeadModule(site.in_shape.channels, self.classes, self.norm)
