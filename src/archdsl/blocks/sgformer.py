"""SG-Former (Ren et al., "SG-Former: Self-guided Transformer with Evolving Token Reallocation").

Ops: the GroupNorm conv stem with its learnable sin-cos-initialised position embedding, the
conv patch-merging downsample, hybrid-scale attention (which *emits* the significance map as a
side channel), self-guided attention (which *consumes* it), the LePE branch that joins each
attention before its output projection (fused by the shared `sum_projection`), and the MLP with
a residual depthwise conv. Stage 4's plain attention is the shared `pooled_attention` with
pool 1. Numerics follow the released code (OliverRensu/SG-Former @b982803, see
shared/reference/official_notes/sgformer.md), not the paper where they differ.

No resolution is hard-coded. The code's constants hold at 224 only; here they are derived
from the map each op sees (the same rule, `nearest_divisor`, for all of them):

* window of the fine half: per side, the divisor of the map side nearest to `window` (7): 7 at
  224, 448, 672 (the code's), 8 at 256 and 384;
* coarse grid of the global half: the map side / `scale` (7x7 at 224, as in the code);
* IAM sub-regions: the sorted tokens are cut in proportion to `shares` ([1, 2, 1]: quarter,
  half, quarter, as the code cuts them); each sub-region's aggregation rate is the divisor of
  its token count nearest to `rates` (the code's 196/56/28, 49/14/7, 2/1), so at every multiple
  of 224 the rates, and hence the f-layer shapes, are the code's, and elsewhere the nearest that
  divide (384, stage 1: 192/64/32);
* position embedding: one row per stem output pixel ((size/4)^2).

Nearness is measured on a log scale (a rate or window twice too large is as far as one half
as large); a tie goes to the smaller (finer) value.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from archdsl.ops import CandidateOp, DownsampleOp, FeatureShape, Op, OpCheckError, Site, register
from archdsl.weights import index_of, register_converter, rename_by_table
from archdsl.blocks.attention import AttentionCandidate, PooledAttentionModule
from archdsl.blocks.ffn import FFNOp, conv_ffn_flops
from archdsl.blocks.layers import OddKernel, attend, attention_flops, conv_flops, divisors, linear_flops, strided_size
from archdsl.blocks.norms import NormName, make_norm, norm_flops


# --- derivation of resolution-dependent sizes ---------------------------------------------------


def nearest_divisor(n: int, target: int) -> int:
    """The divisor of `n` nearest to `target` on a log scale; a tie goes to the smaller."""
    return min(divisors(n), key=lambda d: abs(math.log(d / target)))


def _input_sizes_that_work(site: Site, side_fits, count: int = 4) -> list[int]:
    """Input sizes near the requested one whose map at this op satisfies `side_fits(side)`
    (the map side scales with the input by this stage's stride)."""
    image = site.image_size[0]
    stride = max(1, round(image / site.in_shape.height))
    near = sorted(range(1, 2 * (image // stride) + 8), key=lambda side: (abs(side * stride - image), side))
    return sorted([side * stride for side in near if side_fits(side)][:count])


# --- stem -----------------------------------------------------------------------------------------


def _conv_norm(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv without bias, then GroupNorm with one group (the code's `Conv2d_BN`)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.GroupNorm(1, out_channels))


def sincos_position_embedding(height: int, width: int, channels: int) -> torch.Tensor:
    """(height*width, channels): token i*width + j gets sin(j w), cos(j w), sin(i w), cos(i w),
    w_k = 10000^(-k/(channels/4)): the column index first, as the code's helper does; computed
    in float64 and rounded to float32, as the code does."""
    quarter = channels // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    by_col, by_row = np.outer(cols.reshape(-1), omega), np.outer(rows.reshape(-1), omega)
    table = np.concatenate([np.sin(by_col), np.cos(by_col), np.sin(by_row), np.cos(by_row)], axis=1)
    return torch.from_numpy(table).float()


class SGFormerStemModule(nn.Module):
    def __init__(self, in_channels: int, channels: int, grid: tuple[int, int], position_embedding: bool):
        super().__init__()
        self.layers = nn.Sequential(
            _conv_norm(in_channels, channels, 3, 2), nn.GELU(),
            _conv_norm(channels, channels, 3, 1), nn.GELU(),
            _conv_norm(channels, channels, 3, 2),  # no activation after the last GroupNorm
        )
        self.norm = nn.LayerNorm(channels)  # eps 1e-5 here (the block norms use 1e-6)
        self.grid = grid
        self.pos_embed = nn.Parameter(sincos_position_embedding(*grid, channels).unsqueeze(0)) if position_embedding else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        batch, channels, height, width = x.shape
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


@register
class SGFormerStem(Op):
    """3x3 convs with strides 2, 1, 2, each followed by GroupNorm(1) (GELU after the first two),
    a LayerNorm over channels, then a learnable position embedding with one row per output pixel
    (initialised to the 2-D sin-cos table)."""

    role = "stem"
    op: Literal["sgformer_stem"] = "sgformer_stem"
    position_embedding: bool = True
    """a learnable position embedding, one row per output pixel (sin-cos initialised)"""

    def output_shape(self, site: Site) -> FeatureShape:
        height, width = (strided_size(strided_size(s, 3, 2, 1), 3, 2, 1) for s in site.in_shape[1:])
        return FeatureShape(site.out_channels, height, width)

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels = site.out_channels
        half = FeatureShape(channels, strided_size(height, 3, 2, 1), strided_size(width, 3, 2, 1))
        out = self.output_shape(site)
        convs = (conv_flops(c_in, channels, 3, half[1:]) + conv_flops(channels, channels, 3, half[1:])
                 + conv_flops(channels, channels, 3, out[1:]))
        return convs + 2 * norm_flops("group_norm", half) + 2 * norm_flops("group_norm", out)  # 3 GN + the LayerNorm

    def build(self, site: Site) -> nn.Module:
        out = self.output_shape(site)
        return SGFormerStemModule(site.in_shape.channels, site.out_channels, (out.height, out.width), self.position_embedding)


# --- downsample -----------------------------------------------------------------------------------


class ConvPatchMergingModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: NormName | None):
        super().__init__()
        self.norm = make_norm(norm, in_channels) if norm else nn.Identity()
        self.layers = nn.Sequential(
            _conv_norm(in_channels, out_channels, 1), nn.GELU(),
            _conv_norm(out_channels, out_channels, 3, 2, groups=out_channels), nn.GELU(),
            _conv_norm(out_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.norm(x))


@register
class ConvPatchMerging(DownsampleOp):
    """`norm` (the previous stage's closing norm, if any), then 1x1 conv, GN, GELU; depthwise 3x3
    stride-2 conv, GN, GELU; 1x1 conv, GN. Every conv without bias, every GN one group."""

    op: Literal["conv_patch_merging"] = "conv_patch_merging"
    norm: NormName | None = None
    """a norm before the merge (it closes the previous stage; none when null)"""

    def output_shape(self, site: Site) -> FeatureShape:
        _, height, width = site.in_shape
        return FeatureShape(site.out_channels, strided_size(height, 3, 2, 1), strided_size(width, 3, 2, 1))

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels = site.out_channels
        out = self.output_shape(site)
        return ((norm_flops(self.norm, site.in_shape) if self.norm else 0)
                + conv_flops(c_in, channels, 1, (height, width)) + norm_flops("group_norm", FeatureShape(channels, height, width))
                + conv_flops(channels, channels, 3, out[1:], groups=channels) + norm_flops("group_norm", out)
                + conv_flops(channels, channels, 1, out[1:]) + norm_flops("group_norm", out))

    def build(self, site: Site) -> nn.Module:
        return ConvPatchMergingModule(site.in_shape.channels, site.out_channels, self.norm)


# --- FFN ------------------------------------------------------------------------------------------


class DWConvMLPModule(nn.Module):
    def __init__(self, channels: int, hidden: int, kernel: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel, 1, kernel // 2, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.fc2(self.act(hidden + self.dwconv(hidden)))


@register
class DWConvMLP(FFNOp):
    """fc1, h + depthwise kxk conv(h) (a residual inside the MLP, unlike PVTv2), GELU, fc2."""

    op: Literal["dwconv_mlp"] = "dwconv_mlp"
    ratio: PositiveInt = 4
    """hidden channels = ratio x block width"""
    kernel: OddKernel = 3
    """kernel of the residual depthwise conv (odd)"""

    def flops(self, site: Site) -> int:
        return conv_ffn_flops(site, self.ratio, self.kernel)  # the same layers as ConvFFN; the residual add is free

    def build(self, site: Site) -> nn.Module:
        return DWConvMLPModule(site.in_shape.channels, site.in_shape.channels * self.ratio, self.kernel)


# --- LePE: the convolutional branch beside every attention -----------------------------------------


class LePEModule(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int):
        super().__init__()
        self.linear = nn.Conv2d(in_channels, channels, 1)
        self.conv = nn.Conv2d(channels, channels, kernel, 1, kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        c_in, height, width = site.in_shape
        channels = site.out_channels
        return conv_flops(c_in, channels, 1, (height, width)) + conv_flops(channels, channels, self.kernel, (height, width), groups=channels)

    def build(self, site: Site) -> nn.Module:
        return LePEModule(site.in_shape.channels, site.out_channels, self.kernel)


# --- hybrid-scale attention: emits the significance map --------------------------------------------


def _check_even_heads(op: AttentionCandidate, site: Site) -> None:
    AttentionCandidate.check(op, site)
    if op.heads % 2:
        channels = site.out_channels
        fits = [h for h in divisors(channels) if h % 2 == 0]
        raise OpCheckError(f"{op.op} splits its heads in two halves, so it needs an even head count, not {op.heads}; "
                           f"even head counts that divide its {channels} channels: {fits}", field="heads")


class HybridScaleAttentionModule(nn.Module):
    """Half the heads attend globally over a `scale`-strided conv-merged grid, half within
    windows; returns the concatenated heads (coarse half first) and, if `emit`, the significance
    map (B, H, W): the attention each key receives, averaged over heads and queries, the coarse
    half's upsampled to the map (nearest), plus the windowed half's."""

    def __init__(self, in_channels: int, channels: int, heads: int, scale: int, window: tuple[int, int], emit: bool):
        super().__init__()
        self.half_heads = heads // 2
        self.head_dim = channels // heads
        self.scale = self.head_dim ** -0.5
        self.window = window
        self.emit = emit
        self.coarse_query = nn.Linear(in_channels, channels // 2)
        self.coarse_merge = nn.Conv2d(in_channels, in_channels, scale, scale)
        self.coarse_norm = nn.LayerNorm(in_channels)  # eps 1e-5, as the code has it
        self.coarse_act = nn.GELU()
        self.coarse_key_value = nn.Linear(in_channels, channels)
        self.window_query = nn.Linear(in_channels, channels // 2)
        self.window_key_value = nn.Linear(in_channels, channels)

    def forward(self, x: torch.Tensor):
        batch, _, height, width = x.shape
        heads, dim = self.half_heads, self.head_dim
        tokens = x.flatten(2).transpose(1, 2)

        # coarse half: all queries against the merged grid
        query = self.coarse_query(tokens).reshape(batch, -1, heads, dim).transpose(1, 2)
        merged = self.coarse_merge(x)
        grid = merged.shape[-2:]
        merged = self.coarse_act(self.coarse_norm(merged.flatten(2).transpose(1, 2)))
        key, value = self.coarse_key_value(merged).reshape(batch, -1, 2, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.emit:  # the map needs the probabilities themselves
            coarse_probs = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # B h N Ng
            coarse = coarse_probs @ value  # B h N d
        else:
            coarse = attend(query, key, value, self.scale)

        # fine half: attention within non-overlapping windows
        wh, ww = self.window
        rows, cols = height // wh, width // ww
        query = self.window_query(tokens).reshape(batch, rows, wh, cols, ww, heads, dim)
        query = query.permute(0, 5, 1, 3, 2, 4, 6).reshape(batch, heads, rows * cols, wh * ww, dim)
        key_value = self.window_key_value(tokens).reshape(batch, rows, wh, cols, ww, 2, heads, dim)
        key, value = key_value.permute(5, 0, 6, 1, 3, 2, 4, 7).reshape(2, batch, heads, rows * cols, wh * ww, dim).unbind(0)
        if self.emit:
            window_probs = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # B h windows L L
            fine = window_probs @ value
        else:
            fine = attend(query, key, value, self.scale)
        fine = fine.reshape(batch, heads, rows, cols, wh, ww, dim)
        fine = fine.permute(0, 1, 2, 4, 3, 5, 6).reshape(batch, heads, height * width, dim)

        # heads are head-major in channels: channel = head * dim + e
        out = torch.cat([coarse, fine], dim=1).transpose(-1, -2).reshape(batch, -1, height, width)
        if not self.emit:
            return out
        with torch.no_grad():
            coarse_map = coarse_probs.detach().mean(1).mean(1).reshape(batch, 1, *grid)
            coarse_map = F.interpolate(coarse_map, size=(height, width), mode="nearest")[:, 0]
            fine_map = window_probs.detach().mean(1).mean(2).reshape(batch, rows, cols, wh, ww)
            fine_map = fine_map.permute(0, 1, 3, 2, 4).reshape(batch, height, width)
            significance = fine_map + coarse_map
        return out, significance


@register
class HybridScaleAttention(AttentionCandidate):
    """SG-Former's hybrid-scale attention, as the code builds it (two scales in every variant):
    heads 0..h/2-1 attend from every token to a grid merged by a `scale` x `scale` stride conv
    (then LayerNorm, GELU, K/V projection); heads h/2..h-1 attend within windows. It emits the
    significance map (side channel `emits`) for a later self-guided block of the same stage."""

    op: Literal["hybrid_scale_attention"] = "hybrid_scale_attention"
    scale: PositiveInt = Field(description="merge stride of the coarse half's keys and values (the code's sr_ratio; 1: global attention)")
    window: PositiveInt = Field(7, description="preferred window side of the fine half; per side, the nearest divisor of the map side is used")
    emits: str | None = "significance"
    """name of the side channel the significance map is emitted as (null: none)"""

    def windows(self, site: Site) -> tuple[int, int]:
        return nearest_divisor(site.in_shape.height, self.window), nearest_divisor(site.in_shape.width, self.window)

    def check(self, site: Site) -> None:
        _check_even_heads(self, site)
        _, height, width = site.in_shape
        if height % self.scale or width % self.scale:
            sizes = _input_sizes_that_work(site, lambda side: side % self.scale == 0)
            raise OpCheckError(
                f"scale {self.scale} does not divide the {height}x{width} map of stage {site.stage}: the coarse grid and the "
                f"significance map need map sides that are multiples of {self.scale}; input sizes whose map here fits: {sizes}, or a "
                f"scale that divides {math.gcd(height, width)}", field="scale")

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels, tokens = site.out_channels, height * width
        half, head_dim = channels // 2, channels // self.heads
        grid = (height // self.scale) * (width // self.scale)
        wh, ww = self.windows(site)
        coarse = (linear_flops(c_in, half, tokens) + conv_flops(c_in, c_in, self.scale, (height // self.scale, width // self.scale))
                  + 5 * grid * c_in + linear_flops(c_in, channels, grid) + attention_flops(self.heads // 2, tokens, grid, head_dim))
        fine = linear_flops(c_in, half, tokens) + linear_flops(c_in, channels, tokens) + attention_flops(self.heads // 2, tokens, wh * ww, head_dim)
        upsample = tokens if self.emits is not None else 0  # fvcore counts the nearest upsample's output elements
        return coarse + fine + upsample

    def build(self, site: Site) -> nn.Module:
        return HybridScaleAttentionModule(site.in_shape.channels, site.out_channels, self.heads, self.scale, self.windows(site),
                                          self.emits is not None)


# --- self-guided attention: consumes the significance map ------------------------------------------


class RankAggregation(nn.Module):
    """IAM: tokens sorted by significance (ascending) are cut into sub-regions, and every run of
    `rate` consecutive ranks in a sub-region is merged into one token by a learned weighted sum
    over the run (the code's Linear(rate -> 1) per sub-region, shared across channels).

    All sub-regions in one `embedding_bag` (the gather and the weighted run sums in one op, no
    loop over sub-regions): `weight` holds every sub-region's rate weights back to back, `bias`
    one value per sub-region."""

    def __init__(self, part_sizes: list[int], rates: list[int]):
        super().__init__()
        self.part_sizes, self.rates = list(part_sizes), list(rates)
        runs = [size // rate for size, rate in zip(part_sizes, rates)]
        self.tokens, self.runs = sum(part_sizes), sum(runs)
        weight_start = np.cumsum([0] + rates[:-1])
        # per sorted position: which weight multiplies it; per run: where it starts and its sub-region
        weight_index = np.concatenate([start + np.arange(size) % rate for start, size, rate in zip(weight_start, part_sizes, rates)])
        run_part = np.repeat(np.arange(len(rates)), runs)
        run_start = np.concatenate([[0], np.cumsum(np.repeat(rates, runs))[:-1]])
        self.register_buffer("weight_index", torch.from_numpy(weight_index).long(), persistent=False)
        self.register_buffer("run_start", torch.from_numpy(run_start).long(), persistent=False)
        self.register_buffer("run_part", torch.from_numpy(run_part).long(), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(rates)))
        self.bias = nn.Parameter(torch.empty(len(rates)))
        with torch.no_grad():  # nn.Linear(rate, 1)'s default initialisation, per sub-region
            for part, (start, rate) in enumerate(zip(weight_start.tolist(), rates)):
                nn.init.uniform_(self.weight[start:start + rate], -rate ** -0.5, rate ** -0.5)
                nn.init.uniform_(self.bias[part:part + 1], -rate ** -0.5, rate ** -0.5)

    def forward(self, tokens: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C); orders (K, B, N): K rank -> token permutations. -> (K, B, runs, C)."""
        count, batch, n = orders.shape
        channels = tokens.shape[-1]
        rows = torch.arange(batch, device=orders.device).view(1, batch, 1) * n
        indices = (orders + rows).reshape(-1)
        weights = self.weight[self.weight_index].to(tokens.dtype).repeat(count * batch)
        offsets = (self.run_start.view(1, -1) + torch.arange(count * batch, device=orders.device).view(-1, 1) * n).reshape(-1)
        bags = F.embedding_bag(indices, tokens.reshape(batch * n, channels), offsets, mode="sum", per_sample_weights=weights)
        return bags.view(count, batch, self.runs, channels) + self.bias[self.run_part].to(tokens.dtype).unsqueeze(-1)


def significance_orders(significance: torch.Tensor) -> torch.Tensor:
    """(B, H, W) map -> (2, B, H*W) token ids in ascending significance: of the row-major
    flattening, and of the column-major one (as the code sorts both). Stable sorts: ties keep
    their flattening order, so a given input always gives the same output."""
    batch, height, width = significance.shape
    row_order = torch.argsort(significance.reshape(batch, -1), dim=1, stable=True)
    column_rank = torch.argsort(significance.transpose(1, 2).reshape(batch, -1), dim=1, stable=True)
    column_order = (column_rank % height) * width + column_rank // height  # column-major position -> token
    return torch.stack([row_order, column_order])


class SelfGuidedAttentionModule(nn.Module):
    """All heads query every token; keys and values come from the significance-sorted,
    aggregated tokens: heads 0..h/2-1 from the row-major sort (kv1), h/2..h-1 from the
    column-major sort (kv2). The two orders differ only where the map has ties."""

    def __init__(self, in_channels: int, channels: int, heads: int, part_sizes: list[int], rates: list[int]):
        super().__init__()
        self.heads = heads
        self.head_dim = channels // heads
        self.scale = self.head_dim ** -0.5
        self.query = nn.Linear(in_channels, channels)
        self.row_key_value = nn.Linear(in_channels, channels)
        self.column_key_value = nn.Linear(in_channels, channels)
        self.aggregate = RankAggregation(part_sizes, rates)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        row_runs, column_runs = self.aggregate(tokens, significance_orders(context.detach())).unbind(0)
        half = self.heads // 2
        row_kv = self.row_key_value(row_runs).reshape(batch, -1, 2, half, self.head_dim)
        column_kv = self.column_key_value(column_runs).reshape(batch, -1, 2, half, self.head_dim)
        key, value = torch.cat([row_kv, column_kv], dim=3).permute(2, 0, 3, 1, 4).unbind(0)
        query = self.query(tokens).reshape(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        out = attend(query, key, value, self.scale)
        return out.transpose(-1, -2).reshape(batch, -1, height, width)


@register
class SelfGuidedAttention(AttentionCandidate):
    """SG-Former's self-guided attention: keys and values from tokens sorted by the significance
    map (side channel `consumes`) and aggregated at a rate per sub-region (IAM)."""

    op: Literal["self_guided_attention"] = "self_guided_attention"
    shares: list[PositiveInt] = Field(min_length=1, description="sub-region sizes in proportion, least significant first")
    rates: list[PositiveInt] = Field(min_length=1, description="preferred aggregation rate per sub-region; the nearest divisor of its token count is used")
    consumes: str = "significance"
    """name of the side channel read as the significance map"""

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.shares) != len(self.rates):
            raise ValueError(f"shares has {len(self.shares)} entries but rates {len(self.rates)}; give one rate per sub-region")
        return self

    def layout(self, site: Site) -> tuple[list[int], list[int]]:
        """(tokens per sub-region, aggregation rate per sub-region) at this map."""
        tokens = site.in_shape.tokens
        unit = tokens // sum(self.shares)
        sizes = [share * unit for share in self.shares]
        return sizes, [nearest_divisor(size, rate) for size, rate in zip(sizes, self.rates)]

    def key_tokens(self, site: Site) -> int:
        sizes, rates = self.layout(site)
        return sum(size // rate for size, rate in zip(sizes, rates))

    def check(self, site: Site) -> None:
        _check_even_heads(self, site)
        _, height, width = site.in_shape
        total = sum(self.shares)
        if (height * width) % total:
            sizes = _input_sizes_that_work(site, lambda side: (side * side) % total == 0)
            divisors = [d for d in range(2, 9) if (height * width) % d == 0]
            raise OpCheckError(
                f"the {height * width} tokens of the {height}x{width} map of stage {site.stage} cannot be cut in shares {self.shares} "
                f"({total} equal units): {height * width} is not a multiple of {total}; input sizes whose map here splits: {sizes}, or shares "
                f"summing to one of {divisors}", field="shares")

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels, tokens = site.out_channels, height * width
        keys = self.key_tokens(site)
        return (linear_flops(c_in, channels, tokens) + 2 * tokens * c_in  # query; the two weighted rank aggregations
                + 2 * linear_flops(c_in, channels, keys) + attention_flops(self.heads, tokens, keys, channels // self.heads))

    def build(self, site: Site) -> nn.Module:
        sizes, rates = self.layout(site)
        return SelfGuidedAttentionModule(site.in_shape.channels, site.out_channels, self.heads, sizes, rates)


# --- the authors' checkpoints ------------------------------------------------------------------


def _is_square(count: int) -> bool:
    return math.isqrt(count) ** 2 == count


def resize_position_embedding(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, g*g, C) from a square g x g grid -> (1, gh*gw, C), bicubic with antialiasing, in
    float32, as timm's `resample_abs_pos_embed` does (the result stays float32, so an fp16
    checkpoint is not rounded twice)."""
    side = math.isqrt(table.shape[1])
    channels = table.shape[-1]
    image = table.float().reshape(1, side, side, channels).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode="bicubic", antialias=True, align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, -1, channels)


def resample_rank_weights(weight: torch.Tensor, rate: int) -> torch.Tensor:
    """A run's weights (r,) -> (rate,): linear resampling over rank position, scaled by r / rate
    so the run's total weight is kept (used where the derived rate differs from the checkpoint's)."""
    weight = weight.reshape(-1).float()
    if weight.numel() == rate:
        return weight
    resampled = F.interpolate(weight.view(1, 1, -1), size=rate, mode="linear", align_corners=False).view(-1)
    return resampled * (weight.numel() / rate)


_HYBRID_NAMES = {"sr": "coarse_merge", "norm": "coarse_norm", "q1": "coarse_query", "kv1": "coarse_key_value",
                 "q2": "window_query", "kv2": "window_key_value"}
_SELF_GUIDED_NAMES = {"q": "query", "kv1": "row_key_value", "kv2": "column_key_value"}
_PLAIN_NAMES = {"q": "query", "kv": "key_value"}
_ATTENTION_NAMES = {HybridScaleAttentionModule: _HYBRID_NAMES, SelfGuidedAttentionModule: _SELF_GUIDED_NAMES,
                    PooledAttentionModule: _PLAIN_NAMES}


def _candidate(net: nn.Module, stage: int, block: int, kinds: tuple[type, ...]) -> tuple[int, nn.Module | None]:
    candidates = net.stages[stage].blocks[block].mixer.candidates
    index = index_of(candidates, kinds)
    return index, candidates[index] if index >= 0 else None


def _self_guided_candidate(net: nn.Module, stage: int, block: int) -> str | None:
    """The module path of the self-guided candidate of stages.{stage}.blocks.{block}, if any."""
    if not (0 <= stage < len(net.stages) and block < len(net.stages[stage].blocks)):
        return None
    index, module = _candidate(net, stage, block, (SelfGuidedAttentionModule,))
    return f"stages.{stage}.blocks.{block}.mixer.candidates.{index}" if module is not None else None


# official name pattern -> this project's name, outside the blocks (c/bn: a conv and its norm)
_NETWORK_NAMES = (
    (r"pos_embed", lambda m: "stem.pos_embed"),
    (r"patch_embed1\.conv\.(\d)\.(c|bn)\.(.+)", lambda m: f"stem.layers.{m[1]}.{0 if m[2] == 'c' else 1}.{m[3]}"),
    (r"patch_embed1\.norm\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"patch_embed(\d+)\.conv(\d)\.(c|bn)\.(.+)",
     lambda m: f"stages.{int(m[1]) - 1}.downsample.layers.{2 * (int(m[2]) - 1)}.{0 if m[3] == 'c' else 1}.{m[4]}"),
    (r"head\.(.+)", lambda m: f"head.fc.{m[1]}"),
)


def _rename(key: str, net: nn.Module) -> str:
    last_stage = len(net.stages)
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return name
    if match := re.fullmatch(r"norm(\d+)\.(.+)", key):  # a stage's closing norm: the next downsample's, or the head's
        stage = int(match[1])
        return f"head.norm.{match[2]}" if stage == last_stage else f"stages.{stage}.downsample.norm.{match[2]}"
    match = re.fullmatch(r"block(\d+)\.(\d+)\.(.+)", key)
    if not match or not 1 <= int(match[1]) <= last_stage or int(match[2]) >= len(net.stages[int(match[1]) - 1].blocks):
        return key
    stage, block, rest = int(match[1]) - 1, int(match[2]), match[3]
    prefix = f"stages.{stage}.blocks.{block}"
    if match := re.fullmatch(r"mlp\.(fc1|fc2|dwconv\.dwconv)\.(.+)", rest):
        return f"{prefix}.ffn.{match[1].split('.')[0]}.{match[2]}"
    if match := re.fullmatch(r"attn\.(lepe_linear|lepe_conv)\.(.+)", rest):
        index, _ = _candidate(net, stage, block, (LePEModule,))
        return f"{prefix}.mixer.candidates.{index}.{'linear' if match[1] == 'lepe_linear' else 'conv'}.{match[2]}"
    if match := re.fullmatch(r"attn\.proj\.(.+)", rest):
        return f"{prefix}.mixer.fusion.projection.{match[1]}"
    if match := re.fullmatch(r"attn\.(\w+)\.(.+)", rest):
        index, module = _candidate(net, stage, block, tuple(_ATTENTION_NAMES))
        names = _ATTENTION_NAMES[type(module)] if module is not None else {}
        if match[1] in names:
            return f"{prefix}.mixer.candidates.{index}.{names[match[1]]}.{match[2]}"
    return f"{prefix}.{rest}"


@register_converter("sgformer")
def convert_sgformer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official names (block1.0.attn.q1, patch_embed2.conv1.c, ...) -> this project's modules.

    Shapes: Linear weights become 1x1 conv weights where this project uses convs; a position
    embedding for another input size is resized bicubically; the f1/f2/f3 aggregation layers of
    each self-guided block are joined into its `aggregate.weight` / `aggregate.bias`, resampled
    where the rate derived for this input size differs from the checkpoint's (not at 224)."""
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    rank_layers: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if match := re.fullmatch(r"block(\d+)\.(\d+)\.attn\.f(\d)\.(weight|bias)", key):
            owner = _self_guided_candidate(net, int(match[1]) - 1, int(match[2]))
            if owner is None:
                converted[key] = value  # reported as unexpected
            else:
                rank_layers.setdefault(owner, {}).setdefault(int(match[3]), {})[match[4]] = value
            continue
        name = _rename(key, net)
        if name in expected and value.shape != expected[name].shape:
            shape = tuple(expected[name].shape)
            if name == "stem.pos_embed" and value.dim() == 3 and value.shape[-1] == shape[-1] and _is_square(value.shape[1]):
                value = resize_position_embedding(value, net.stem.grid)
            elif shape == tuple(value.shape) + (1, 1):
                value = value.reshape(shape)  # Linear [out, in] -> 1x1 conv [out, in, 1, 1]
        converted[name] = value
    for owner, layers in rank_layers.items():
        module = net.get_submodule(f"{owner}.aggregate")
        parts = sorted(layers)
        if parts != list(range(1, len(module.rates) + 1)) or any(set(layers[p]) != {"weight", "bias"} for p in parts):
            for part in parts:
                for kind, value in layers[part].items():
                    converted[f"{owner}.f{part}.{kind}"] = value  # reported as unexpected, with the missing aggregate
            continue
        converted[f"{owner}.aggregate.weight"] = torch.cat(
            [resample_rank_weights(layers[p]["weight"], rate) for p, rate in zip(parts, module.rates)])
        converted[f"{owner}.aggregate.bias"] = torch.cat([layers[p]["bias"].reshape(1).float() for p in parts])
    return converted
