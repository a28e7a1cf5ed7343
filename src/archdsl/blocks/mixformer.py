"""MixFormer (Chen et al., "MixFormer: Mixing Features across Windows and Dimensions").

Ops: the 3-conv stem with its 2x2 patch conv, the BatchNorm + strided-conv downsampling and
the 1280-d projection head. The Mixing Block is a composition of shared ops: the
`window_attention` and `depthwise_conv` candidates, the `channel_interaction` and
`spatial_interaction` gates between them, and the `concat_projection` fusion. Numerics follow
the released PaddlePaddle code (PaddleClas PR 1820, see shared/reference/official_notes/mixformer.md);
the converter below reads its checkpoints' names and Paddle's layouts.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from archdsl.ops import DownsampleOp, FeatureShape, Op, OpCheckError, Site, register
from archdsl.weights import index_of, register_converter, rename_by_table
from archdsl.blocks.attention import WindowAttentionModule
from archdsl.blocks.convolution import DepthwiseConvModule
from archdsl.blocks.heads import HeadOp
from archdsl.blocks.interactions import ChannelInteractionModule, SpatialInteractionModule
from archdsl.blocks.layers import conv_flops, linear_flops, strided_size
from archdsl.blocks.norms import NormName, make_norm, norm_flops


# --- stem ---------------------------------------------------------------------------------------


class MixFormerStemModule(nn.Module):
    """Zero-pad to a multiple of 4; three 3x3 convs at half width (strides 2, 1, 1), each with
    BatchNorm and GELU; a 2x2 stride-2 conv to the full width; LayerNorm over channels."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        half = channels // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
        )
        self.proj = nn.Conv2d(half, channels, 2, 2)
        self.norm = make_norm("layer_norm", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % 4 or width % 4:
            x = F.pad(x, (0, (-width) % 4, 0, (-height) % 4))
        return self.norm(self.proj(self.layers(x)))


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
        return FeatureShape(site.out_channels, *(-(-size // 4) for size in site.in_shape[1:]))

    def check(self, site: Site) -> None:
        if site.out_channels % 2:
            raise OpCheckError(f"the stem's convs run at half the stage-0 width, so it must be even, not {site.out_channels}")

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels, half = site.out_channels, site.out_channels // 2
        half_hw = (self._half_size(height), self._half_size(width))
        out = self.output_shape(site)
        convs = (conv_flops(c_in, half, 3, half_hw) + 2 * conv_flops(half, half, 3, half_hw)
                 + conv_flops(half, channels, 2, (out.height, out.width)))
        return convs + 3 * norm_flops("batch_norm", FeatureShape(half, *half_hw)) + norm_flops("layer_norm", out)

    def build(self, site: Site) -> nn.Module:
        return MixFormerStemModule(site.in_shape.channels, site.out_channels)


# --- downsample --------------------------------------------------------------------------------


class NormStridedConvModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, norm: NormName):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.reduction = nn.Conv2d(in_channels, out_channels, kernel, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


@register
class NormStridedConv(DownsampleOp):
    """A norm, then a `kernel`×`kernel` conv with stride `kernel` that widens (MixFormer's
    ConvMerging: BatchNorm, 2x2 stride-2 conv; no norm after it)."""

    op: Literal["norm_strided_conv"] = "norm_strided_conv"
    kernel: PositiveInt = 2
    """kernel and stride of the patch-merging conv"""
    norm: NormName = "batch_norm"
    """norm before the conv"""

    def output_shape(self, site: Site) -> FeatureShape:
        _, height, width = site.in_shape
        return FeatureShape(site.out_channels, height // self.kernel, width // self.kernel)

    def check(self, site: Site) -> None:
        _, height, width = site.in_shape
        if height % self.kernel or width % self.kernel:
            raise OpCheckError(
                f"the {height}x{width} map entering stage {site.stage} is not a multiple of the stride {self.kernel} "
                f"(the released MixFormer code asserts this); use an input size that keeps every stage map divisible: "
                f"with a stride-4 stem and three such downsamples, sides that are multiples of 32", field="kernel")

    def flops(self, site: Site) -> int:
        out = self.output_shape(site)
        return norm_flops(self.norm, site.in_shape) + conv_flops(site.in_shape.channels, site.out_channels, self.kernel,
                                                                 (out.height, out.width))

    def build(self, site: Site) -> nn.Module:
        return NormStridedConvModule(site.in_shape.channels, site.out_channels, self.kernel, self.norm)


# --- head --------------------------------------------------------------------------------------


class ProjectionHeadModule(nn.Module):
    def __init__(self, channels: int, width: int, classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-5)
        self.projection = nn.Linear(channels, width)
        self.act = nn.GELU()
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.projection(self.norm(x.permute(0, 2, 3, 1))))
        return self.fc(x.mean(dim=(1, 2)))


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
        return (norm_flops("layer_norm", shape) + linear_flops(shape.channels, self.width, shape.tokens)
                + linear_flops(self.width, self.classes))

    def build(self, site: Site) -> nn.Module:
        return ProjectionHeadModule(site.in_shape.channels, self.width, self.classes)


# --- the authors' checkpoints ------------------------------------------------------------------


@register_converter("mixformer")
def convert_mixformer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official Paddle names and layouts -> this project's module names and PyTorch layouts.

    Paddle stores Linear weights [in, out] (every 2-D `*.weight` of the release is a Linear),
    BatchNorm statistics as `_mean` / `_variance` and no `num_batches_tracked` (left at the
    model's value here). A Linear that is a 1x1 conv here (the fusion's projection) is reshaped.
    """
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            value = value.t()
        name = _rename(key, net)
        name = re.sub(r"\._mean$", ".running_mean", re.sub(r"\._variance$", ".running_var", name))
        target = expected.get(name)
        if target is not None and target.ndim == 4 and value.ndim == 2 and tuple(target.shape[2:]) == (1, 1):
            value = value.reshape(*value.shape, 1, 1)
        converted[name] = value
        if name.endswith(".running_mean"):
            counter = name[: -len("running_mean")] + "num_batches_tracked"
            if counter in expected:
                converted[counter] = expected[counter]
    return converted


# official name inside `attn.` -> (module kind, where among the mixer's parts, name inside it)
_MIXER_PARTS = {
    "relative_position_bias_table": (WindowAttentionModule, "candidates", "relative_position_bias_table"),
    "relative_position_index": (WindowAttentionModule, "candidates", "relative_position_index"),
    "proj_attn": (WindowAttentionModule, "candidates", "input_projection"),
    "proj_attn_norm": (WindowAttentionModule, "candidates", "input_norm"),
    "qkv": (WindowAttentionModule, "candidates", "qkv"),
    "attn_norm": (WindowAttentionModule, "candidates", "output_norm"),
    "proj_cnn": (DepthwiseConvModule, "candidates", "input_projection"),
    "proj_cnn_norm": (DepthwiseConvModule, "candidates", "input_norm"),
    "dwconv3x3.0": (DepthwiseConvModule, "candidates", "depthwise"),
    "dwconv3x3.1": (DepthwiseConvModule, "candidates", "depthwise_norm"),
    "projection": (DepthwiseConvModule, "candidates", "projection"),
    "conv_norm": (DepthwiseConvModule, "candidates", "output_norm"),
    "channel_interaction": (ChannelInteractionModule, "interactions", "module.layers"),
    "spatial_interaction": (SpatialInteractionModule, "interactions", "module.layers"),
}


# official name pattern -> this project's name, outside the blocks
_NETWORK_NAMES = (
    (r"patch_embed\.stem\.(.+)", lambda m: f"stem.layers.{m[1]}"),
    (r"patch_embed\.(proj|norm)\.(.+)", lambda m: f"stem.{m[1]}.{m[2]}"),
    (r"norm\.(.+)", lambda m: f"head.norm.{m[1]}"),
    (r"last_proj\.(.+)", lambda m: f"head.projection.{m[1]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
    (r"layers\.(\d+)\.downsample\.(.+)", lambda m: f"stages.{int(m[1]) + 1}.downsample.{m[2]}"),
)


def _rename(key: str, net: nn.Module) -> str:
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return name
    match = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if not match or int(match[1]) >= len(net.stages) or int(match[2]) >= len(net.stages[int(match[1])].blocks):
        return key
    stage, block, rest = int(match[1]), int(match[2]), match[3]
    prefix = f"stages.{stage}.blocks.{block}"
    if match := re.fullmatch(r"mlp\.(.+)", rest):
        return f"{prefix}.ffn.{match[1]}"
    if rest == "attn.relative_position_bias_table" or rest == "attn.relative_position_index":
        part, leaf = rest[len("attn."):], ""
    elif match := re.fullmatch(r"attn\.(.+)\.(weight|bias|_mean|_variance)", rest):
        part, leaf = match[1], "." + match[2]
    else:
        return f"{prefix}.{rest}"
    if part == "proj":
        return f"{prefix}.mixer.fusion.projection{leaf}"
    if part not in _MIXER_PARTS and (inner := re.fullmatch(r"(channel_interaction|spatial_interaction)\.(\d)", part)):
        kind, group, name = _MIXER_PARTS[inner[1]]
        name = f"{name}.{inner[2]}"
    elif part in _MIXER_PARTS:
        kind, group, name = _MIXER_PARTS[part]
    else:
        return f"{prefix}.{rest}"
    mixer = net.stages[stage].blocks[block].mixer
    index = index_of(getattr(mixer, group), kind)
    return f"{prefix}.mixer.{group}.{index}.{name}{leaf}"
