"""MixFormer (Chen et al., "MixFormer: Mixing Features across Windows and Dimensions").

Ops: the 3-conv stem with its 2x2 patch conv and the 1280-d projection head. The downsampling
is the shared `norm_strided_conv` (blocks.convolution) with BatchNorm. The Mixing Block is a composition of shared ops: the
`window_attention` and `depthwise_conv` candidates, the `channel_interaction` and
`spatial_interaction` gates between them, and the `concat_projection` fusion. Numerics follow
the released PaddlePaddle code (PaddleClas PR 1820, see shared/reference/official_notes/mixformer.md);
converters/mixformer.py reads its checkpoints' names and Paddle's layouts.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.heads import HeadModule, HeadOp, classifier
from archdsl.blocks.layers import GELU, conv_flops, linear_flops, strided_size
from archdsl.network import pad_to_multiple
from archdsl.norms import make_norm, make_token_norm, norm_flops
from archdsl.ops import FeatureShape, Op, OpCheckError, Site, register
from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing

# --- stem ---------------------------------------------------------------------------------------


class MixFormerStemModule(nn.Module):
    """Zero-pad to a multiple of 4; three 3x3 convs at half width (strides 2, 1, 1), each with
    BatchNorm and GELU; a 2x2 stride-2 conv to the full width; LayerNorm over channels."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        half = channels // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, 2, 1),
            nn.BatchNorm2d(half),
            GELU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1),
            nn.BatchNorm2d(half),
            GELU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1),
            nn.BatchNorm2d(half),
            GELU(inplace=True),
        )
        self.proj = nn.Conv2d(half, channels, 2, 2)
        self.norm = make_norm("layer_norm", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.layers(pad_to_multiple(x, 4))))  # to sides that are multiples of 4


@register
class MixFormerStem(Op):
    """MixFormer's stem: total stride 4 (maps of ceil(H/4) x ceil(W/4)); the three 3x3 convs stay
    at half the stage-0 width (the paper's "three successive convolutions" to C)."""

    role = "stem"
    op: Literal["mixformer_stem"] = "mixformer_stem"

    @staticmethod
    def _half_size(size: int) -> int:
        return strided_size(-(-size // 4) * 4, 3, 2, 1)

    def output_shape(self, site: Site) -> FeatureShape:
        return FeatureShape(site.out_channels, *(-(-size // 4) for size in site.in_shape.map_size))

    def check(self, site: Site) -> None:
        if site.out_channels % 2:
            raise OpCheckError(f"the stem's convs run at half the stage-0 width, so it must be even, not {site.out_channels}")

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels, half = site.out_channels, site.out_channels // 2
        half_hw = (self._half_size(height), self._half_size(width))
        out = self.output_shape(site)
        convs = (
            conv_flops(c_in, half, 3, half_hw)
            + 2 * conv_flops(half, half, 3, half_hw)
            + conv_flops(half, channels, 2, (out.height, out.width))
        )
        return convs + 3 * norm_flops("batch_norm", FeatureShape(half, *half_hw)) + norm_flops("layer_norm", out)

    def build(self, site: Site) -> nn.Module:
        return MixFormerStemModule(site.in_shape.channels, site.out_channels)


# --- head --------------------------------------------------------------------------------------


class ProjectionHeadModule(HeadModule):
    def __init__(self, channels: int, width: int, classes: int):
        super().__init__(width)
        self.norm = make_token_norm("layer_norm", channels)
        self.projection = nn.Linear(channels, width)
        self.act = GELU(inplace=True)
        self.fc = classifier(width, classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.projection(self.norm(x.permute(0, 2, 3, 1)))).mean(dim=(1, 2))


@register
class ProjectionHead(HeadOp):
    """LayerNorm, Linear to `width` and GELU at every pixel, then average pooling and the
    classifier: MixFormer's 1280-d projection runs before the pooling, as in its code."""

    op: Literal["projection_head"] = "projection_head"
    width: PositiveInt = 1280
    """channels of the projection before pooling"""

    def flops(self, site: Site) -> int:
        shape = site.in_shape
        # the token mean is not a multiply-add (fvcore does not count it either)
        return (
            norm_flops("layer_norm", shape) + linear_flops(shape.channels, self.width, shape.tokens) + self.classifier_flops(site)
        )

    def num_features(self, site: Site) -> int:
        return self.width

    def build(self, site: Site) -> nn.Module:
        return ProjectionHeadModule(site.in_shape.channels, self.width, self.classes)


# The authors' evaluation transform (the PaddleClas MixFormer yaml configs, as read in
# shared/reference/official_notes/mixformer.md, 3.11): bicubic resize of the shorter side to
# 256, centre crop 224 (crop_pct 224/256), ImageNet mean and std.
register_preprocessing("mixformer", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875, interpolation="bicubic"))
