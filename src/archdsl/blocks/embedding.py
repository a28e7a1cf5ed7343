"""What turns a map into a token sequence, shared by every family: the class token and the learned
absolute position embedding (`TokenExtras`, options of any op that opens a sequence: NomMer's
`conv_max_pool`, the `patch_embedding` stem), and the `patch_embedding` stem itself (ViT's and
ConvNeXt's non-overlapping patch conv).

A class token makes the "tokens" layout of `archdsl.ops.FeatureShape`: a B×C×1×(1 + h·w) row,
the class token first, the map's pixels after it row-major (timm's order). A position embedding
has one learned vector per position of what the op outputs: the h×w map, or the whole row, the
class token's position included (ViT's 197 positions at 224 with 16x16 patches).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from archdsl.blocks.layers import conv_flops, strided_size
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import FeatureShape, Op, OpCheckError, Site, register
from archdsl.training import WithoutWeightDecay


class TokenExtras(BaseModel):
    """The options of an op that may open a token sequence (mixed into its op class)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    position_embedding: bool = False
    """a learned absolute position embedding, one vector per position the op outputs (the class token's included)"""
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
        self, out: FeatureShape, position_embedding: bool, class_token: bool, position_std: float, class_token_std: float
    ) -> None:
        """Parameters drawn from normal distributions of the given deviations (NomMer's code:
        1 and 1; timm's ViT: 0.02 and 1e-6). The position embedding has the shape of the output
        tensor (1, C, h, w) or (1, C, 1, 1 + h·w); the class token (1, C, 1, 1)."""
        self.position_embedding = nn.Parameter(torch.randn(1, *out.tensor_size) * position_std) if position_embedding else None
        self.class_token = nn.Parameter(torch.randn(1, out.channels, 1, 1) * class_token_std) if class_token else None

    def add_token_extras(self, x: torch.Tensor) -> torch.Tensor:
        if self.class_token is not None:
            tokens = x.flatten(2).unsqueeze(2)  # (B, C, 1, h·w), row-major
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1, -1), tokens], dim=3)
        if self.position_embedding is not None:
            x = x + self.position_embedding
        return x


# --- the patch embedding stem ---------------------------------------------------------------------


class PatchEmbeddingModule(TokenExtrasModule):
    def __init__(
        self, in_channels: int, out: FeatureShape, patch: int, norm: NormName | None, position_embedding: bool, class_token: bool
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out.channels, patch, patch)
        self.norm = make_norm(norm, out.channels) if norm else nn.Identity()
        self.init_token_extras(out, position_embedding, class_token, position_std=0.02, class_token_std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_token_extras(self.norm(self.conv(x)))


@register
class PatchEmbedding(TokenExtras, Op):
    """A `patch`×`patch` conv with stride `patch` and bias, an optional norm on its map, then the
    `TokenExtras`: ViT's patch embedding (16, a class token and a position embedding), ConvNeXt's
    stem (4, a LayerNorm). A map the patch does not divide loses its last rows and columns, as
    the strided conv does."""

    role: ClassVar[str] = "stem"
    op: Literal["patch_embedding"] = "patch_embedding"
    patch: PositiveInt = 4
    """side and stride of the patches"""
    norm: NormName | None = None
    """a norm on the patch map, before any class token (none when null)"""

    def _map(self, site: Site) -> FeatureShape:
        height, width = (strided_size(side, self.patch, self.patch, 0) for side in site.in_shape.map_size)
        return FeatureShape(site.out_channels, height, width)

    def output_shape(self, site: Site) -> FeatureShape:
        return self.with_extras(self._map(site))

    def check(self, site: Site) -> None:
        height, width = site.in_shape.map_size
        if min(height, width) < self.patch:
            raise OpCheckError(
                f"the {height}x{width} input is smaller than one {self.patch}x{self.patch} patch; use a larger input "
                f"size or a smaller patch",
                field="patch",
            )

    def flops(self, site: Site) -> int:
        patches = self._map(site)
        # the class token's concatenation and the embedding's sum are not multiply-adds (fvcore skips them)
        return conv_flops(site.in_shape.channels, patches.channels, self.patch, patches.map_size) + (
            norm_flops(self.norm, patches) if self.norm else 0
        )

    def build(self, site: Site) -> nn.Module:
        return PatchEmbeddingModule(
            site.in_shape.channels,
            self.output_shape(site),
            self.patch,
            self.norm,
            self.position_embedding,
            self.class_token,
        )
