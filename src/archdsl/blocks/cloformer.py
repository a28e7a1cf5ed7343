"""CloFormer (Fan et al., "Rethinking Local Perception in Lightweight Vision Transformer").

Ops: the 4-conv stem, AttnConv (the local context candidate), and the strided ConvFFN that
downsamples between stages. The global branch is the shared `pooled_attention`; the fusion is
the shared `concat_projection`; the FFN is the shared `conv_ffn`. Numerics follow the released
code (qhfan/CloFormer @9181f69, see shared/reference/official_notes/cloformer.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.attention import AttentionCandidate
from archdsl.blocks.ffn import ConvFFNModule, conv_ffn_flops
from archdsl.blocks.layers import DepthwiseConv2d, OddKernel, Swish, conv_flops, strided_size, two_stride_2_convs
from archdsl.network import CandidateModule
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import DownsampleOp, FeatureShape, Op, Site, register
from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing

# --- stem ---------------------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.BatchNorm2d(out_channels), nn.ReLU())


class CloFormerStemModule(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        half = channels // 2
        self.layers = nn.Sequential(
            _conv_bn_relu(in_channels, half, 2),
            _conv_bn_relu(half, channels, 2),
            _conv_bn_relu(channels, channels, 1),
            _conv_bn_relu(channels, channels, 1),
            nn.Conv2d(channels, channels, 1),
        )
        self.norm = make_norm("group_norm", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(x))


@register
class CloFormerStem(Op):
    """3x3 convs with strides 2, 2, 1, 1 (BatchNorm + ReLU after each), a 1x1 conv, GroupNorm(1)."""

    role = "stem"
    op: Literal["cloformer_stem"] = "cloformer_stem"

    def output_shape(self, site: Site) -> FeatureShape:
        return FeatureShape(site.out_channels, *two_stride_2_convs(site.in_shape.map_size))

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels, half = site.out_channels, site.out_channels // 2
        half_hw = (strided_size(height, 3, 2, 1), strided_size(width, 3, 2, 1))
        out = self.output_shape(site)
        out_hw = (out.height, out.width)
        convs = (
            conv_flops(c_in, half, 3, half_hw)
            + conv_flops(half, channels, 3, out_hw)
            + 2 * conv_flops(channels, channels, 3, out_hw)
            + conv_flops(channels, channels, 1, out_hw)
        )
        batch_norms = norm_flops("batch_norm", FeatureShape(half, *half_hw)) + 3 * norm_flops("batch_norm", out)
        return convs + batch_norms + norm_flops("group_norm", out)

    def build(self, site: Site) -> nn.Module:
        return CloFormerStemModule(site.in_shape.channels, site.out_channels)


# --- AttnConv: the local context candidate -------------------------------------------------------


class AttnConvModule(CandidateModule):
    def __init__(self, in_channels: int, channels: int, heads: int, kernel: int):
        super().__init__()
        self.qkv = nn.Conv2d(in_channels, 3 * channels, 1)
        # one depthwise conv over Q, K and V together equals three separate ones
        self.depthwise = DepthwiseConv2d(3 * channels, kernel)
        self.gate = nn.Sequential(nn.Conv2d(channels, channels, 1), Swish(), nn.Conv2d(channels, channels, 1))
        # the released code scales by the per-head dimension, not the branch width
        self.scale = (channels // heads) ** -0.5

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        query, key, value = self.depthwise(self.qkv(x)).chunk(3, dim=1)
        weights = torch.tanh(self.scale * self.gate(query * key))
        return weights * value


@register
class AttnConv(AttentionCandidate):
    """Local context by convolution with attention-style gating: Q, K, V from a 1x1 conv and a
    depthwise kxk conv; context weights tanh(d^-1/2 · FC(Swish(FC(Q ⊙ K)))) multiply V."""

    op: Literal["attn_conv"] = "attn_conv"
    kernel: OddKernel = 3
    """depthwise kernel of the local branch (odd)"""

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels, hw = site.out_channels, (height, width)
        return (
            conv_flops(c_in, 3 * channels, 1, hw)
            + conv_flops(3 * channels, 3 * channels, self.kernel, hw, groups=3 * channels)
            + 2 * conv_flops(channels, channels, 1, hw)
        )

    def build(self, site: Site) -> nn.Module:
        return AttnConvModule(site.in_shape.channels, site.out_channels, self.heads, self.kernel)


# --- the downsampling ConvFFN ------------------------------------------------------------------


class StridedConvFFNModule(nn.Module):
    """shortcut(x) + ConvFFN_stride2(norm(x)); the shortcut is a dense kxk stride-2 conv, BN, 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, ratio: int, kernel: int, norm: NormName):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.ffn = ConvFFNModule(in_channels, in_channels * ratio, out_channels, kernel, stride=2)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel, 2, kernel // 2),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.ffn(self.norm(x))


@register
class StridedConvFFN(DownsampleOp):
    """CloFormer's downsampling: the last block of the previous stage runs its ConvFFN with
    stride 2 and widens, with a strided shortcut beside it. It replaces that block's FFN."""

    op: Literal["strided_conv_ffn"] = "strided_conv_ffn"
    capabilities = frozenset({"replaces_previous_ffn"})
    ratio: PositiveInt = 4
    """hidden channels = ratio x input channels"""
    kernel: OddKernel = 5
    """depthwise kernel (odd)"""
    norm: NormName = "group_norm"
    """norm before the strided FFN"""

    def output_shape(self, site: Site) -> FeatureShape:
        height, width = site.in_shape.map_size
        pad = self.kernel // 2
        return FeatureShape(
            site.out_channels, strided_size(height, self.kernel, 2, pad), strided_size(width, self.kernel, 2, pad)
        )

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        out = self.output_shape(site)
        out_hw = (out.height, out.width)
        shortcut = (
            conv_flops(c_in, c_in, self.kernel, out_hw)
            + norm_flops("batch_norm", FeatureShape(c_in, *out_hw))
            + conv_flops(c_in, site.out_channels, 1, out_hw)
        )
        return norm_flops(self.norm, site.in_shape) + conv_ffn_flops(site, self.ratio, self.kernel, stride=2) + shortcut

    def build(self, site: Site) -> nn.Module:
        return StridedConvFFNModule(site.in_shape.channels, site.out_channels, self.ratio, self.kernel, self.norm)


# The authors' evaluation transform (qhfan/CloFormer, classification/data/build.py; see
# shared/reference/official_notes/cloformer.md, 2.9): bicubic resize of the shorter side to 256,
# centre crop 224 (crop_pct 224/256), ImageNet mean and std.
register_preprocessing("cloformer", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875, interpolation="bicubic"))
