"""Attention context candidates shared by every family: written once, reused by all."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.ops import CandidateOp, OpCheckError, Site, register
from archdsl.blocks.layers import attend, attention_flops, conv_flops


class AttentionCandidate(CandidateOp):
    """A candidate with heads; `channels / heads` is the head dimension."""

    heads: PositiveInt

    def check(self, site: Site) -> None:
        if site.out_channels % self.heads:
            divisors = [h for h in range(1, site.out_channels + 1) if site.out_channels % h == 0]
            raise OpCheckError(
                f"{self.heads} heads do not divide this candidate's {site.out_channels} channels; heads that do: {divisors}",
                field="heads")


class PooledAttentionModule(nn.Module):
    def __init__(self, in_channels: int, channels: int, heads: int, pool: int):
        super().__init__()
        self.heads = heads
        self.head_dim = channels // heads
        self.scale = self.head_dim ** -0.5
        self.query = nn.Conv2d(in_channels, channels, 1)
        self.key_value = nn.Conv2d(in_channels, 2 * channels, 1)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        query = self.query(x).reshape(batch, self.heads, self.head_dim, height * width).transpose(-1, -2)
        # the input is pooled before the K/V projection: equal to pooling K and V (the
        # projection is per pixel and affine), and the released CloFormer code does it this way
        key_value = self.key_value(self.pool(x))
        key_value = key_value.reshape(batch, 2, self.heads, self.head_dim, -1).transpose(-1, -2)
        key, value = key_value.unbind(1)
        out = attend(query, key, value, self.scale)
        return out.transpose(-1, -2).reshape(batch, self.heads * self.head_dim, height, width)


@register
class PooledAttention(AttentionCandidate):
    """Global attention whose keys and values come from an average-pooled map (CloFormer's
    global branch; PVT-style spatial reduction by pooling). `pool: 1` is plain global attention."""

    op: Literal["pooled_attention"] = "pooled_attention"
    pool: PositiveInt = 1

    def check(self, site: Site) -> None:
        super().check(site)
        height, width = site.in_shape.height, site.in_shape.width
        if height % self.pool or width % self.pool:
            fits = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
            problem = "is larger than" if self.pool > min(height, width) else "does not divide"
            raise OpCheckError(
                f"pool {self.pool} {problem} the {height}x{width} map of stage {site.stage}; "
                f"pools that do: {fits}, or an input size that makes this map a multiple of {self.pool}",
                field="pool")

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels = site.out_channels
        keys = (height // self.pool) * (width // self.pool)
        return (conv_flops(c_in, channels, 1, (height, width))
                + conv_flops(c_in, 2 * channels, 1, (height // self.pool, width // self.pool))
                + attention_flops(self.heads, height * width, keys, channels // self.heads)
                + (site.in_shape.numel if self.pool > 1 else 0))  # the pooling's sums (cost.py handle)

    def build(self, site: Site) -> nn.Module:
        return PooledAttentionModule(site.in_shape.channels, site.out_channels, self.heads, self.pool)
