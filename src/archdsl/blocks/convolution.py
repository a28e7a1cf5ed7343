"""Convolution context candidates shared by every family."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from archdsl.ops import CandidateOp, FeatureShape, Site, register
from archdsl.blocks.layers import OddKernel, conv_flops, linear_flops
from archdsl.blocks.norms import NormName, make_norm, norm_flops


class DepthwiseConvModule(nn.Module):
    """[Linear + LayerNorm] -> depthwise kxk + BatchNorm + GELU (the features) -> 1x1 conv to the
    candidate's share -> [output gate] -> [norm] (the `finish` step)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, input_projection: bool, output_norm: NormName | None):
        super().__init__()
        self.input_projection = nn.Linear(in_channels, in_channels) if input_projection else None
        self.input_norm = nn.LayerNorm(in_channels, eps=1e-5) if input_projection else None
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel, 1, kernel // 2, groups=in_channels)
        self.depthwise_norm = nn.BatchNorm2d(in_channels)
        self.act = nn.GELU()
        self.projection = nn.Conv2d(in_channels, channels, 1)
        self.output_norm = make_norm(output_norm, channels) if output_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_projection is not None:
            x = self.input_norm(self.input_projection(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.act(self.depthwise_norm(self.depthwise(x)))

    def finish(self, features: torch.Tensor, output_gate: torch.Tensor | None) -> torch.Tensor:
        out = self.projection(features)
        if output_gate is not None:
            # MixFormer gates the projected features before their BatchNorm
            out = out * output_gate
        return self.output_norm(out) if self.output_norm is not None else out


@register
class DepthwiseConv(CandidateOp):
    """Local context by a depthwise `kernel`×`kernel` conv at the input width (BatchNorm, GELU),
    then a 1x1 conv to the candidate's `channels`.

    `input_projection`: first a Linear and a LayerNorm at the input width (MixFormer's conv
    branch). `output_norm`: a norm after the 1x1 conv (MixFormer: batch_norm). Interactions
    whose source is this candidate read the depthwise features, at the input width, before
    the 1x1 conv; an output gate multiplies the 1x1 conv's output, before `output_norm`."""

    op: Literal["depthwise_conv"] = "depthwise_conv"
    kernel: OddKernel = 3
    """depthwise kernel (odd)"""
    input_projection: bool = False
    """a 1x1 projection before the depthwise conv"""
    output_norm: NormName | None = None
    """a norm on the output (none when null)"""

    def feature_shape(self, site: Site) -> FeatureShape:
        return site.in_shape

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels, hw = site.out_channels, (height, width)
        flops = 0
        if self.input_projection:
            flops += linear_flops(c_in, c_in, height * width) + norm_flops("layer_norm", site.in_shape)
        flops += conv_flops(c_in, c_in, self.kernel, hw, groups=c_in) + norm_flops("batch_norm", site.in_shape)
        flops += conv_flops(c_in, channels, 1, hw)
        if self.output_norm:
            flops += norm_flops(self.output_norm, site.in_shape.with_channels(channels))
        return flops

    def build(self, site: Site) -> nn.Module:
        return DepthwiseConvModule(site.in_shape.channels, site.out_channels, self.kernel, self.input_projection, self.output_norm)
