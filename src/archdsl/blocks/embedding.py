"""What turns a map into a token sequence, shared by every family: the class token and the learned
absolute position embedding (`TokenExtras`, options of any op that opens a sequence: NomMer's
`conv_max_pool`, the `patch_embedding` stem), and the patch embedding itself: a strided conv and
a norm, non-overlapping (ViT's and ConvNeXt's stems) or overlapping (PVTv2's stem and
downsamples), as the `patch_embedding` stem and its downsample twin.

A class token makes the "tokens" layout of `archdsl.ops.FeatureShape`: a B×C×1×(1 + h·w) row,
the class token first, the map's pixels after it row-major (timm's order). A position embedding
has one learned vector per position of what the op outputs: the h×w map, or the whole row, the
class token's position included (ViT's 197 positions at 224 with 16x16 patches).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt
from torch import nn

from archdsl.blocks.layers import LayerChains, conv_flops, strided_size
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import DownsampleOp, FeatureShape, Op, OpCheckError, Site, register
from archdsl.training import WithoutWeightDecay


class TokenExtras(BaseModel):
    """The options of an op that may open a token sequence (mixed into its op class)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    position_embedding: bool | Literal["map"] = False
    """a learned absolute position embedding: true, one vector per position the op outputs (the class token's included: ViT); map, one per pixel of the map, added before the class token is put first (PiT)"""
    class_token: bool = False
    """a learned class token put before the map's pixels, making a token sequence"""

    def with_extras(self, shape: FeatureShape) -> FeatureShape:
        """The op's output: its map, plus the class token if it has one."""
        return replace(shape, extra_tokens=1) if self.class_token else shape


class TokenExtrasModule(WithoutWeightDecay, nn.Module):
    """Base of a module that ends by adding `TokenExtras`: call `init_token_extras` once its own
    layers are made (so seeded initialisation keeps the order of the code it follows) and
    `add_token_extras` on its output map."""

    without_weight_decay: ClassVar[tuple[str, ...]] = ("position_embedding", "class_token")

    def init_token_extras(
        self,
        out: FeatureShape,
        position_embedding: bool | Literal["map"],
        class_token: bool,
        position_std: float,
        class_token_std: float,
    ) -> None:
        """Parameters drawn from normal distributions of the given deviations (NomMer's code:
        1 and 1; timm's ViT: 0.02 and 1e-6). The position embedding has the shape of the output
        tensor (1, C, h, w) or (1, C, 1, 1 + h·w), or of the map (1, C, h, w) when it covers the
        map only; the class token (1, C, 1, 1)."""
        self.embeds_map_only = position_embedding == "map"
        shape = (out.channels, out.height, out.width) if self.embeds_map_only else out.tensor_size
        self.position_embedding = nn.Parameter(torch.randn(1, *shape) * position_std) if position_embedding else None
        self.class_token = nn.Parameter(torch.randn(1, out.channels, 1, 1) * class_token_std) if class_token else None

    def add_token_extras(self, x: torch.Tensor) -> torch.Tensor:
        if self.position_embedding is not None and self.embeds_map_only:
            x = x + self.position_embedding
        if self.class_token is not None:
            tokens = x.flatten(2).unsqueeze(2)  # (B, C, 1, h·w), row-major
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1, -1), tokens], dim=3)
        if self.position_embedding is not None and not self.embeds_map_only:
            x = x + self.position_embedding
        return x


# --- the patch embedding: a stem, and its twin between stages ------------------------------------


class PatchEmbeddingModule(LayerChains, TokenExtrasModule):
    layer_chains = (("conv", "norm"),)

    def __init__(
        self,
        in_channels: int,
        out: FeatureShape,
        conv: tuple[int, int, int],
        norm: NormName | None,
        position_embedding: bool | Literal["map"],
        class_token: bool,
        input_norm: NormName | None = None,
    ):
        super().__init__()
        kernel, stride, padding = conv
        self.input_norm = make_norm(input_norm, in_channels) if input_norm else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out.channels, kernel, stride, padding)
        self.norm = make_norm(norm, out.channels) if norm else nn.Identity()
        self.init_token_extras(out, position_embedding, class_token, position_std=0.02, class_token_std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_token_extras(self.norm(self.conv(self.input_norm(x))))


@register
class PatchEmbedding(TokenExtras, Op):
    """A conv with bias, `kernel`×`kernel` with stride `patch` and `padding` on each side, an
    optional norm on its map, then the `TokenExtras`: ViT's patch embedding (16, a class token
    and a position embedding), ConvNeXt's stem (4, a LayerNorm), PVTv2's overlapping one (patch
    4, kernel 7, padding 3, a LayerNorm). A map the stride does not divide loses its last rows
    and columns, as the strided conv does. Its twin of the same name is a downsample."""

    role: ClassVar[str] = "stem"
    op: Literal["patch_embedding"] = "patch_embedding"
    patch: PositiveInt = 4
    """stride of the patches (and their side, unless kernel says otherwise)"""
    kernel: PositiveInt | None = None
    """side of the conv's kernel: larger than patch for overlapping patches (PVTv2: 7 with patch 4); patch when null"""
    padding: NonNegativeInt = 0
    """zero padding on each side of the map (overlapping patches: kernel // 2)"""
    norm: NormName | None = None
    """a norm on the patch map, before any class token (none when null)"""

    def _conv(self) -> tuple[int, int, int]:
        """(kernel, stride, padding) of the conv."""
        return self.kernel or self.patch, self.patch, self.padding

    def _map(self, site: Site) -> FeatureShape:
        height, width = (strided_size(side, *self._conv()) for side in site.in_shape.map_size)
        return FeatureShape(site.out_channels, height, width)

    def output_shape(self, site: Site) -> FeatureShape:
        return self.with_extras(self._map(site))

    def check(self, site: Site) -> None:
        height, width = site.in_shape.map_size
        kernel, _, padding = self._conv()
        if min(height, width) + 2 * padding < kernel:
            field = "kernel" if self.kernel else "patch"
            padded = f" (padded by {padding} on each side)" if padding else ""
            raise OpCheckError(
                f"the {height}x{width} input{padded} is smaller than one {kernel}x{kernel} patch; use a larger input "
                f"size or a smaller {field}",
                field=field,
            )

    def norm_before_conv(self) -> NormName | None:
        """The norm on the input map (the downsample twin's `input_norm`; the stem has none)."""
        return None

    def flops(self, site: Site) -> int:
        patches = self._map(site)
        input_norm = self.norm_before_conv()
        # the class token's concatenation and the embedding's sum are not multiply-adds (fvcore skips them)
        return (
            (norm_flops(input_norm, site.in_shape) if input_norm else 0)
            + conv_flops(site.in_shape.channels, patches.channels, self._conv()[0], patches.map_size)
            + (norm_flops(self.norm, patches) if self.norm else 0)
        )

    def build(self, site: Site) -> nn.Module:
        return PatchEmbeddingModule(
            site.in_shape.channels,
            self.output_shape(site),
            self._conv(),
            self.norm,
            self.position_embedding,
            self.class_token,
            self.norm_before_conv(),
        )


@register
class PatchEmbeddingDownsample(PatchEmbedding, DownsampleOp):
    """The patch embedding as a downsample between stages (PVTv2's: patch 2, kernel 3, padding 1,
    a LayerNorm), with `input_norm` on the map it reads: the previous stage's closing norm (PVTv2
    ends every stage with a LayerNorm; the last stage's is the head's norm)."""

    role: ClassVar[str] = "downsample"
    input_norm: NormName | None = None
    """a norm on the input map before the conv: the previous stage's closing norm (none when null)"""

    def norm_before_conv(self) -> NormName | None:
        return self.input_norm
