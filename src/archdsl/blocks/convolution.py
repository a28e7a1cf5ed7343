"""Convolution ops shared by every family: the depthwise conv, ResNet bottleneck and LePE context
candidates; the norm + strided conv downsample."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.layers import (
    GELU,
    DepthwiseConv2d,
    LayerChains,
    OddKernel,
    StrideFit,
    check_merge_fits,
    conv_flops,
    linear_flops,
    merged_map,
    pads_map,
)
from archdsl.network import CandidateModule, pad_to_multiple
from archdsl.norms import NormName, make_norm, make_token_norm, norm_flops
from archdsl.ops import CandidateOp, DownsampleOp, FeatureShape, OpCheckError, Site, register


class DepthwiseConvModule(LayerChains, CandidateModule):
    """[Linear + LayerNorm] -> depthwise kxk [+ norm] [+ GELU] (the features) -> [1x1 conv to the
    candidate's share] -> [output gate] -> [norm] (the `finish` step)."""

    layer_chains = (("depthwise", "depthwise_norm", "act"),)

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel: int,
        input_projection: bool,
        output_norm: NormName | None,
        depthwise_norm: NormName | None = "batch_norm",
        activation: bool = True,
        projection: bool = True,
    ):
        super().__init__()
        self.input_projection = nn.Linear(in_channels, in_channels) if input_projection else None
        self.input_norm = make_token_norm("layer_norm", in_channels) if input_projection else None
        self.depthwise = DepthwiseConv2d(in_channels, kernel)
        self.depthwise_norm = make_norm(depthwise_norm, in_channels) if depthwise_norm else nn.Identity()
        self.act = GELU(inplace=True) if activation else nn.Identity()
        self.projection = nn.Conv2d(in_channels, channels, 1) if projection else nn.Identity()
        self.output_norm = make_norm(output_norm, channels) if output_norm else None

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
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
    """Local context by a depthwise `kernel`×`kernel` conv (with bias) at the input width, its
    `depthwise_norm` (BatchNorm) and GELU, then a 1x1 conv to the candidate's `channels`.
    ConvNeXt's token mixer is the bare conv: `depthwise_norm: null, activation: false,
    projection: false`.

    `input_projection`: first a Linear and a LayerNorm at the input width (MixFormer's conv
    branch). `output_norm`: a norm after the 1x1 conv (MixFormer: batch_norm). Interactions
    whose source is this candidate read the depthwise features, at the input width, before
    the 1x1 conv; an output gate multiplies the 1x1 conv's output, before `output_norm`."""

    op: Literal["depthwise_conv"] = "depthwise_conv"
    kernel: OddKernel = 3
    """depthwise kernel (odd)"""
    input_projection: bool = False
    """a 1x1 projection before the depthwise conv"""
    depthwise_norm: NormName | None = "batch_norm"
    """the norm after the depthwise conv (none when null)"""
    activation: bool = True
    """GELU after the depthwise conv and its norm"""
    projection: bool = True
    """the 1x1 conv to the candidate's channels (without it the candidate keeps the input width)"""
    output_norm: NormName | None = None
    """a norm on the output (none when null)"""

    def feature_shape(self, site: Site) -> FeatureShape:
        return site.in_shape

    def check(self, site: Site) -> None:
        if not self.projection and site.out_channels != site.in_shape.channels:
            raise OpCheckError(
                f"without its projection a depthwise conv keeps the input width {site.in_shape.channels}, but this "
                f"candidate has {site.out_channels} channels; set channels: {site.in_shape.channels} (or leave it out), "
                f"or projection: true",
                field="projection",
            )

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels, hw = site.out_channels, (height, width)
        flops = 0
        if self.input_projection:
            flops += linear_flops(c_in, c_in, height * width) + norm_flops("layer_norm", site.in_shape)
        flops += conv_flops(c_in, c_in, self.kernel, hw, groups=c_in)
        if self.depthwise_norm:
            flops += norm_flops(self.depthwise_norm, site.in_shape)
        if self.projection:
            flops += conv_flops(c_in, channels, 1, hw)
        if self.output_norm:
            flops += norm_flops(self.output_norm, site.in_shape.with_channels(channels))
        return flops

    def build(self, site: Site) -> nn.Module:
        return DepthwiseConvModule(
            site.in_shape.channels,
            site.out_channels,
            self.kernel,
            self.input_projection,
            self.output_norm,
            self.depthwise_norm,
            self.activation,
            self.projection,
        )


# --- a ResNet bottleneck (NomMer's CNN candidate) ---------------------------------------------


class BottleneckModule(LayerChains, CandidateModule):
    """relu(x + BN(conv1x1(relu(BN(conv3x3(relu(BN(conv1x1(x))))))))), all convs without bias."""

    layer_chains = (("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"),)

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu1, self.relu2 = nn.ReLU(inplace=True), nn.ReLU(inplace=True)

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        # the shortcut adds the candidate's input: in a block, the normalised map
        return F.relu(self.bn3(self.conv3(out)) + x)


@register
class Bottleneck(CandidateOp):
    """Local context by a ResNet bottleneck (1x1, 3x3, 1x1 convs at width channels/`expansion`,
    BatchNorm after each, ReLU) with its own shortcut from its input and a final ReLU, so its
    output is never negative. NomMer's CNN candidate: the paper gives the three convs, the code
    the rest. Its output has the input's width."""

    op: Literal["bottleneck"] = "bottleneck"
    expansion: PositiveInt = 4
    """hidden channels = expansion x channels"""

    def check(self, site: Site) -> None:
        if site.out_channels != site.in_shape.channels:
            raise OpCheckError(
                f"the bottleneck adds its input back, so it must keep the block width "
                f"{site.in_shape.channels}; found channels: {site.out_channels}",
                field="channels",
            )
        if site.out_channels < self.expansion:
            raise OpCheckError(
                f"expansion {self.expansion} leaves no channels of {site.out_channels}; use at most {site.out_channels}",
                field="expansion",
            )

    def flops(self, site: Site) -> int:
        channels = site.in_shape.channels
        height, width = site.in_shape.map_size
        inner, hw = channels // self.expansion, (height, width)
        convs = conv_flops(channels, inner, 1, hw) + conv_flops(inner, inner, 3, hw) + conv_flops(inner, channels, 1, hw)
        return convs + 2 * norm_flops("batch_norm", FeatureShape(inner, height, width)) + norm_flops("batch_norm", site.in_shape)

    def build(self, site: Site) -> nn.Module:
        return BottleneckModule(site.out_channels, site.out_channels // self.expansion)


# --- LePE: the convolutional branch beside an attention (SG-Former) --------------------------------


class LePEModule(CandidateModule):
    def __init__(self, in_channels: int, channels: int, kernel: int):
        super().__init__()
        self.linear = nn.Conv2d(in_channels, channels, 1)
        self.conv = DepthwiseConv2d(channels, kernel)

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.conv(self.linear(x))


@register
class LePE(CandidateOp):
    """A per-pixel linear layer then a depthwise kxk conv (both with bias): the locally-enhanced
    positional term SG-Former adds to every attention's output before its projection (fuse with
    `sum_projection`)."""

    op: Literal["lepe"] = "lepe"
    kernel: OddKernel = 3
    """kernel of the depthwise conv (odd)"""

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels = site.out_channels
        return conv_flops(c_in, channels, 1, (height, width)) + conv_flops(
            channels, channels, self.kernel, (height, width), groups=channels
        )

    def build(self, site: Site) -> nn.Module:
        return LePEModule(site.in_shape.channels, site.out_channels, self.kernel)


# --- a norm and a strided conv: MixFormer's and ConvNeXt's downsample --------------------------------------------------------------------------------


class NormStridedConvModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, norm: NormName, pad: bool = False):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.reduction = nn.Conv2d(in_channels, out_channels, kernel, kernel)
        self.pad = pad  # zero-pad the normalised map to a multiple of the stride: ceil-sized output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.reduction(pad_to_multiple(x, self.reduction.stride[0]) if self.pad else x)


@register
class NormStridedConv(DownsampleOp):
    """A norm, then a `kernel`×`kernel` conv with stride `kernel` that widens (MixFormer's
    ConvMerging: BatchNorm, 2x2 stride-2 conv; ConvNeXt's downsample: LayerNorm, the same conv;
    no norm after it). `fit: pad` zero-pads a
    normalised map the stride does not divide on the bottom and right, so an odd map halves to
    its ceiling (as mmdet's patch mergings pad) where the released code asserts even sides."""

    op: Literal["norm_strided_conv"] = "norm_strided_conv"
    kernel: PositiveInt = 2
    """kernel and stride of the patch-merging conv"""
    norm: NormName = "batch_norm"
    """norm before the conv"""
    fit: StrideFit = "exact"
    """how the stride meets a map it does not divide: exact (refuse, as the released code asserts) or pad (zero-pad the map to a multiple)"""

    def output_shape(self, site: Site) -> FeatureShape:
        return merged_map(site.in_shape, self.kernel, self.fit, site.out_channels)

    def check(self, site: Site) -> None:
        check_merge_fits(site, self.kernel, self.fit, "kernel", "the stride")

    def flops(self, site: Site) -> int:
        out = self.output_shape(site)
        return norm_flops(self.norm, site.in_shape) + conv_flops(
            site.in_shape.channels, site.out_channels, self.kernel, (out.height, out.width)
        )

    def build(self, site: Site) -> nn.Module:
        return NormStridedConvModule(site.in_shape.channels, site.out_channels, self.kernel, self.norm, pads_map(self.fit))
