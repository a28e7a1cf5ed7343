"""Downsamples any family can use that merge neighbourhoods: patch merging (each 2x2
neighbourhood's pixels stacked into one pixel of four times the channels, normalised, and
projected by a Linear: Swin's PatchMerging; the same as a 2x2 stride-2 conv, but with the norm
on the stacked pixels, not on the map before it), and token pooling (PiT's: a strided depthwise
conv on the map of a token sequence, a Linear on its extra tokens)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.layers import (
    DepthwiseConv2d,
    StrideFit,
    check_merge_fits,
    conv_flops,
    linear_flops,
    merged_map,
    pads_map,
    strided_size,
)
from archdsl.blocks.multihead import PixelLinear
from archdsl.network import pad_to_multiple
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import DownsampleOp, FeatureShape, OpCheckError, Site, register


def space_to_depth(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, block²·C, H/block, W/block): the pixel at row offset dy and column
    offset dx of each block×block neighbourhood goes to channels (dx·block + dy)·C to
    (dx·block + dy + 1)·C. For block 2 that is Swin's cat([x0, x1, x2, x3]) (x1 the pixel below
    x0, x2 the one right of it) and timm's reshape-permute order, which equal each other."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height // block, block, width // block, block)
    return x.permute(0, 5, 3, 1, 2, 4).reshape(batch, block * block * channels, height // block, width // block)


class PatchMergingModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: NormName, pad: bool):
        super().__init__()
        self.stride = stride
        self.norm = make_norm(norm, stride * stride * in_channels)
        self.reduction = PixelLinear(stride * stride * in_channels, out_channels, bias=False)
        self.pad = pad  # zero-pad a side the stride does not divide (bottom, right): the output is the ceiling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = pad_to_multiple(x, self.stride)
        return self.reduction(self.norm(space_to_depth(x, self.stride)))


@register
class PatchMerging(DownsampleOp):
    """Swin's patch merging: every `stride`×`stride` neighbourhood's pixels concatenated
    (`space_to_depth`, Swin's and timm's channel order), a norm over the stride²·C channels, and
    a Linear without bias to the stage width (Swin: stride 2, 4·C -> 2·C). `fit: pad` zero-pads
    a side the stride does not divide on the bottom or right first (timm's and mmdet's patch
    merging pad so; the released Swin code asserts even sides)."""

    op: Literal["patch_merging"] = "patch_merging"
    norm: NormName = "layer_norm"
    """norm over the four stacked pixels' channels, before the Linear"""
    fit: StrideFit = "exact"
    """how the merging meets a side the stride does not divide: exact (refuse, as the released Swin code asserts) or pad (zero-pad it to a multiple)"""
    stride: PositiveInt = 2
    """side of the merged neighbourhood, and so the stride (Swin: 2)"""

    def output_shape(self, site: Site) -> FeatureShape:
        return merged_map(site.in_shape, self.stride, self.fit, site.out_channels)

    def check(self, site: Site) -> None:
        check_merge_fits(site, self.stride, self.fit, "stride", "the merged neighbourhood")

    def flops(self, site: Site) -> int:
        out = self.output_shape(site)
        stacked = out.with_channels(self.stride**2 * site.in_shape.channels)
        return norm_flops(self.norm, stacked) + linear_flops(stacked.channels, site.out_channels, out.height * out.width)

    def build(self, site: Site) -> nn.Module:
        return PatchMergingModule(site.in_shape.channels, site.out_channels, self.stride, self.norm, pads_map(self.fit))


# --- token pooling ---------------------------------------------------------------------------------


class TokenPoolingModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, shape: FeatureShape):
        super().__init__()
        self.map_size, self.extra_tokens = shape.map_size, shape.extra_tokens
        self.conv = DepthwiseConv2d(in_channels, stride + 1, stride, out_channels // in_channels, padding=stride // 2)
        self.fc = PixelLinear(in_channels, out_channels) if shape.extra_tokens else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            return self.conv(x)
        extra, pixels = x[..., : self.extra_tokens], x[..., self.extra_tokens :]
        pooled = self.conv(pixels.reshape(*x.shape[:2], *self.map_size))
        return torch.cat([self.fc(extra), pooled.flatten(2).unsqueeze(2)], dim=3)


@register
class TokenPooling(DownsampleOp):
    """PiT's pooling between stages: the map by a depthwise conv (kernel `stride` + 1, padding
    `stride` // 2, with bias) that widens each channel to stage width / input width channels,
    and the extra tokens that the sequence carries (the class token) by a Linear to the stage
    width, so the class token travels across stages. On a plain map it is the conv alone."""

    op: Literal["token_pooling"] = "token_pooling"
    capabilities = frozenset({"runs_on_tokens"})  # it splits the row into its extra tokens and its map
    stride: PositiveInt = 2
    """stride of the depthwise conv (its kernel is stride + 1)"""

    def _map(self, site: Site) -> tuple[int, int]:
        return tuple(strided_size(side, self.stride + 1, self.stride, self.stride // 2) for side in site.in_shape.map_size)

    def output_shape(self, site: Site) -> FeatureShape:
        height, width = self._map(site)
        return FeatureShape(site.out_channels, height, width, extra_tokens=site.in_shape.extra_tokens)

    def check(self, site: Site) -> None:
        channels, width = site.in_shape.channels, site.out_channels
        if width % channels:
            multiples = ", ".join(str(channels * factor) for factor in (1, 2, 3, 4))
            raise OpCheckError(
                f"the depthwise conv widens each of the {channels} input channels to the same number of channels, so the "
                f"stage width must be a multiple of {channels}, not {width}: {multiples}, ..."
            )

    def flops(self, site: Site) -> int:
        channels, width = site.in_shape.channels, site.out_channels
        return conv_flops(channels, width, self.stride + 1, self._map(site), groups=channels) + linear_flops(
            channels, width, site.in_shape.extra_tokens
        )

    def build(self, site: Site) -> nn.Module:
        return TokenPoolingModule(site.in_shape.channels, site.out_channels, self.stride, site.in_shape)
