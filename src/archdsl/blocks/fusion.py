"""Fusion rules: how a mixer combines its candidates' outputs into the block width."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from archdsl.blocks.layers import linear_flops
from archdsl.ops import Op, OpCheckError, Site, register


class FusionOp(Op):
    role: ClassVar[str] = "fusion"
    # True when the candidates split the block width between them (their channels sum to it),
    # False when each has the full width; the search derives the candidates' shares from it
    splits_width: ClassVar[bool] = False


class SumModule(nn.Module):
    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out


@register
class Sum(FusionOp):
    """Add the candidates' outputs; each must have the block's full width."""

    op: Literal["sum"] = "sum"
    capabilities = frozenset({"runs_on_tokens"})

    def check(self, site: Site) -> None:
        if any(part != site.out_channels for part in site.parts):
            raise OpCheckError(
                f"`{self.op}` adds candidates of the block width {site.out_channels}, but they have {list(site.parts)} channels; "
                f"give every candidate channels: {site.out_channels}, or fuse with concat_projection"
            )

    def flops(self, site: Site) -> int:
        return 0

    def build(self, site: Site) -> nn.Module:
        return SumModule()


class ConcatProjectionModule(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.projection = nn.Conv2d(channels, channels, 1)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.projection(torch.cat(parts, dim=1))


@register
class ConcatProjection(FusionOp):
    """Concatenate the candidates' channel shares, then a 1x1 projection (CloFormer)."""

    op: Literal["concat_projection"] = "concat_projection"
    capabilities = frozenset({"runs_on_tokens"})
    splits_width: ClassVar[bool] = True

    def check(self, site: Site) -> None:
        if sum(site.parts) != site.out_channels:
            raise OpCheckError(
                f"candidate channel shares {list(site.parts)} sum to {sum(site.parts)}, not the stage width {site.out_channels}; "
                f"adjust their `channels` so they sum to {site.out_channels}"
            )

    def flops(self, site: Site) -> int:
        channels = site.out_channels
        return linear_flops(channels, channels, site.in_shape.tokens)

    def build(self, site: Site) -> nn.Module:
        return ConcatProjectionModule(site.out_channels)


class SumProjectionModule(SumModule):
    def __init__(self, channels: int):
        super().__init__()
        self.projection = nn.Conv2d(channels, channels, 1)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.projection(super().forward(parts))


@register
class SumProjection(Sum):
    """Add the candidates' outputs, then a 1x1 projection: the output projection of an
    attention whose side branches (SG-Former's LePE) join before it."""

    op: Literal["sum_projection"] = "sum_projection"

    def flops(self, site: Site) -> int:
        channels = site.out_channels
        return linear_flops(channels, channels, site.in_shape.tokens)

    def build(self, site: Site) -> nn.Module:
        return SumProjectionModule(site.out_channels)
