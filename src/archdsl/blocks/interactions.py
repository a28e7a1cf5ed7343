"""Interactions: gates that one candidate's features put on another candidate of the same
mixer (MixFormer's bi-directional interactions, usable between any two candidates).

A gate is a sigmoid in (0, 1). Its site's `in_shape` is what the source candidate's features
are (`CandidateOp.feature_shape`); its `out_channels` is the target candidate's share.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.layers import GELU, conv_flops
from archdsl.norms import norm_flops
from archdsl.ops import FeatureShape, InteractionOp, OpCheckError, Site, register


def _bottleneck(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """1x1 conv, BatchNorm, GELU, 1x1 conv: the gates' small network."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1), nn.BatchNorm2d(hidden), GELU(inplace=True), nn.Conv2d(hidden, out_channels, 1)
    )


def _bottleneck_flops(in_channels: int, hidden: int, out_channels: int, hw: tuple[int, int]) -> int:
    return (
        conv_flops(in_channels, hidden, 1, hw)
        + norm_flops("batch_norm", FeatureShape(hidden, *hw))
        + conv_flops(hidden, out_channels, 1, hw)
    )


class _ReducingInteraction(InteractionOp):
    """An interaction whose hidden width is the source's channels // `reduction`."""

    reduction: PositiveInt = 8
    """the gate's hidden channels = source channels / reduction"""

    def hidden(self, site: Site) -> int:
        return site.in_shape.channels // self.reduction

    def check(self, site: Site) -> None:
        if self.hidden(site) < 1:
            raise OpCheckError(
                f"reduction {self.reduction} leaves no hidden channels from the source's {site.in_shape.channels}; "
                f"use a reduction of at most {site.in_shape.channels}",
                field="reduction",
            )


class ChannelInteractionModule(nn.Module):
    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.layers = _bottleneck(in_channels, hidden, out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(self.pool(features)))


@register
class ChannelInteraction(_ReducingInteraction):
    """SE-style gate from the source's features onto the target's values, one per channel and
    image: global average pool (over the whole, padded map), 1x1 conv to source//reduction,
    BatchNorm, GELU, 1x1 conv to the target's channels, sigmoid (MixFormer's channel
    interaction: conv branch -> attention values, reduction 8)."""

    op: Literal["channel_interaction"] = "channel_interaction"
    applies_to = "values"

    def output_shape(self, site: Site) -> FeatureShape:
        return FeatureShape(site.out_channels, 1, 1)

    def flops(self, site: Site) -> int:
        # fvcore counts the adaptive pool as its input elements
        return site.in_shape.numel + _bottleneck_flops(site.in_shape.channels, self.hidden(site), site.out_channels, (1, 1))

    def build(self, site: Site) -> nn.Module:
        return ChannelInteractionModule(site.in_shape.channels, self.hidden(site), site.out_channels)


class SpatialInteractionModule(nn.Module):
    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.layers = _bottleneck(in_channels, hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(features))


@register
class SpatialInteraction(_ReducingInteraction):
    """Gate from the source's features onto the target's output, one per pixel shared by all
    channels: 1x1 conv to source//reduction, BatchNorm, GELU, 1x1 conv to 1, sigmoid
    (MixFormer's spatial interaction: attention output -> conv branch; its hidden width d//16
    of the block width d is (d/2)//8 of the attention share, so reduction 8)."""

    op: Literal["spatial_interaction"] = "spatial_interaction"
    applies_to = "output"

    def output_shape(self, site: Site) -> FeatureShape:
        return site.in_shape.with_channels(1)

    def flops(self, site: Site) -> int:
        height, width = site.in_shape.map_size
        return _bottleneck_flops(site.in_shape.channels, self.hidden(site), 1, (height, width))

    def build(self, site: Site) -> nn.Module:
        return SpatialInteractionModule(site.in_shape.channels, self.hidden(site))
