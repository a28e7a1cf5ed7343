"""Attention context candidates shared by every family: written once, reused by all."""

from __future__ import annotations

from math import prod
from typing import Literal

import torch
from pydantic import NonNegativeInt, PositiveInt
from torch import nn

from archdsl.blocks.layers import (
    GELU,
    FitRule,
    LayerChains,
    attention_flops,
    common_divisors,
    conv_flops,
    divisors,
    fit_to_map,
    fitted_map,
    linear_flops,
    pads_map,
    refuses_map,
)
from archdsl.blocks.multihead import (
    SpatialReductionAttention,
    attend,
    merge_heads,
    sdpa_flops,
    shifted_window_mask,
    split_heads,
    window_merge,
    window_partition,
)
from archdsl.network import CandidateModule, pad_to_multiple
from archdsl.norms import NormName, make_norm, make_token_norm, norm_flops
from archdsl.ops import CandidateOp, FeatureShape, OpCheckError, Site, register
from archdsl.training import WithoutWeightDecay


class AttentionCandidate(CandidateOp):
    """A candidate with heads; `channels / heads` is the head dimension. Its module attends
    through `multihead.attend`, which is fused SDPA outside tracing: the SDPA rule counts it
    wherever a tracer records the fused op."""

    fvcore_handles = {"aten::scaled_dot_product_attention": sdpa_flops}
    heads: PositiveInt
    """attention heads; they must divide the candidate's channels"""

    def check(self, site: Site) -> None:
        if site.out_channels % self.heads:
            raise OpCheckError(
                f"{self.heads} heads do not divide this candidate's {site.out_channels} channels; heads that do: {divisors(site.out_channels)}",
                field="heads",
            )


def pooled_elements(inputs, outputs) -> int:
    """fvcore handle for `aten::avg_pool2d`: one add per input element, the rule fvcore itself
    uses for adaptive pooling (it counts that, but not this)."""
    from fvcore.nn.jit_handles import get_shape

    return prod(get_shape(inputs[0]))


class PaddedAvgPool(nn.AvgPool2d):
    """Average pooling of the map zero-padded to a multiple of the pool (bottom and right), so
    that a map the pool does not divide loses no pixel: a pool at the edge averages its real
    pixels with zeros. The padding is counted as pooled input, as fvcore's `pooled_elements` sees it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_to_multiple(x, self.kernel_size))


Reduction = Literal["average_pool", "strided_conv", "adaptive_pool_conv"]


class StridedConvReduction(LayerChains, nn.Module):
    """PVT's spatial reduction: a `ratio`×`ratio` conv with stride `ratio` and bias, keeping the
    channels, then a norm of its map. `pad`: the map is first zero-padded (bottom, right) to a
    multiple of `ratio`, so that no pixel is dropped."""

    layer_chains = (("conv", "norm"),)

    def __init__(self, channels: int, ratio: int, norm: NormName, pad: bool = False):
        super().__init__()
        self.ratio, self.pad = ratio, pad
        self.conv = nn.Conv2d(channels, channels, ratio, ratio)
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(pad_to_multiple(x, self.ratio) if self.pad else x))


class AdaptivePoolConvReduction(LayerChains, nn.Module):
    """PVTv2-li's linear spatial reduction: an adaptive average pool to `size`×`size` (a key count
    that does not grow with the image), a 1x1 conv with bias, a norm, GELU."""

    layer_chains = (("pool", "conv", "norm", "act"),)

    def __init__(self, channels: int, size: int, norm: NormName):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(size)
        self.conv = nn.Conv2d(channels, channels, 1)
        self.norm = make_norm(norm, channels)
        self.act = GELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pool(x))))


def pooled_attention_module(
    in_channels: int,
    channels: int,
    heads: int,
    pool: int,
    qkv_bias: bool = True,
    output_projection: bool = False,
    pad: bool = False,
    reduction: Reduction = "average_pool",
    reduction_norm: NormName = "layer_norm",
    pooled_size: int = 7,
) -> SpatialReductionAttention:
    """1x1 convs for Q and K/V; the input is reduced before the K/V projection (`reduction`, see
    `PooledAttention`). Pooling before the projection equals pooling K and V (the projection is
    per pixel and affine), and the released CloFormer code does it so. `pad`: the reduced map is
    taken from the input zero-padded to a multiple of the pool."""
    reduce: nn.Module
    if reduction == "adaptive_pool_conv":
        reduce = AdaptivePoolConvReduction(in_channels, pooled_size, reduction_norm)
    elif pool == 1:  # no reduction: plain global attention
        reduce = nn.Identity()
    elif reduction == "strided_conv":
        reduce = StridedConvReduction(in_channels, pool, reduction_norm, pad)
    else:
        reduce = PaddedAvgPool(pool) if pad else nn.AvgPool2d(pool)
    return SpatialReductionAttention(
        nn.Conv2d(in_channels, channels, 1, bias=qkv_bias),
        reduce,
        nn.Conv2d(in_channels, 2 * channels, 1, bias=qkv_bias),
        heads,
        channels // heads,
        nn.Conv2d(channels, channels, 1) if output_projection else None,
    )


@register
class PooledAttention(AttentionCandidate):
    """Global attention whose keys and values come from a reduced map: PVT-style spatial
    reduction. `reduction` says how the map is reduced: `average_pool`, a `pool`×`pool` average
    pool (CloFormer's global branch); `strided_conv`, a `pool`×`pool` conv with stride `pool`
    and a `reduction_norm` of its map (PVTv1/v2's spatial reduction); `adaptive_pool_conv`, an
    adaptive average pool to `pooled_size`×`pooled_size`, a 1x1 conv, a `reduction_norm` and
    GELU (PVTv2-li's linear reduction). `pool: 1` is plain global attention (NomMer's G-MHSA:
    `qkv_bias: false, output_projection: true`). `qkv_bias`: biases on the Q/K/V projections.
    `output_projection`: a Linear (1x1 conv) after the heads are merged.
    Its values can be gated per channel (`value_gate`, channels ordered head by head).
    `fit` says how the pool meets a map it does not divide (`blocks.layers.fit_to_map`); with
    `pad` the keys and values are reduced from the map zero-padded to a multiple of the pool
    (the queries stay every pixel's), so a pool at the edge averages real pixels and zeros."""

    op: Literal["pooled_attention"] = "pooled_attention"
    capabilities = frozenset({"value_gate", "runs_on_tokens"})  # on tokens without reduction only (`check`)
    fvcore_handles = {**AttentionCandidate.fvcore_handles, "aten::avg_pool2d": pooled_elements}
    pool: PositiveInt = 1
    """the reduction ratio: side and stride of the average pool or strided conv over keys and values (1: plain global attention)"""
    reduction: Reduction = "average_pool"
    """how keys and values are reduced: average_pool (CloFormer), strided_conv (a conv with a norm: PVT), adaptive_pool_conv (to pooled_size, a 1x1 conv, a norm, GELU: PVTv2-li)"""
    reduction_norm: NormName = "layer_norm"
    """the norm after the reduction's conv (strided_conv, adaptive_pool_conv)"""
    pooled_size: PositiveInt = 7
    """adaptive_pool_conv: side of the map the keys and values come from, whatever the map's size"""
    qkv_bias: bool = True
    """bias in the query, key and value projections"""
    output_projection: bool = False
    """a linear projection after the attention"""
    fit: FitRule = "exact"
    """how the pool meets a map it does not divide: exact (refuse), nearest_divisor (the nearest common divisor of the map sides), pad (zero-pad the map to a multiple), divisor_or_pad"""

    def pool_at(self, site: Site) -> int:
        return fit_to_map(self.pool, site.in_shape.height, site.in_shape.width, self.fit)

    def reduces(self) -> bool:
        """Whether keys and values come from a reduced map (not every token)."""
        return self.pool > 1 or self.reduction == "adaptive_pool_conv"

    def check(self, site: Site) -> None:
        super().check(site)
        height, width = site.in_shape.map_size
        if self.reduction == "adaptive_pool_conv" and self.pool != 1:
            raise OpCheckError(
                f"adaptive_pool_conv reduces every map to pooled_size x pooled_size ({self.pooled_size}x{self.pooled_size}), "
                f"so it takes no ratio; remove `pool: {self.pool}`, or use reduction average_pool or strided_conv "
                f"for a ratio",
                field="pool",
            )
        if self.reduces() and site.in_shape.layout == "tokens":
            field = "pool" if self.pool > 1 else "reduction"
            what = f"pool {self.pool}" if self.pool > 1 else f"reduction {self.reduction}"
            verb = "averages" if self.reduction == "average_pool" else "merges"
            raise OpCheckError(
                f"{what} {verb} neighbouring pixels, but stage {site.stage} carries a token sequence "
                f"({site.in_shape}) whose extra tokens have no neighbours; use pool: 1 (global attention) there",
                field=field,
            )
        pool = self.pool_at(site)
        if refuses_map(site.in_shape, pool, self.fit):
            fits = common_divisors(height, width)
            problem = "is larger than" if pool > min(height, width) else "does not divide"
            conv = " (the strided conv's kernel and stride)" if self.reduction == "strided_conv" else ""
            raise OpCheckError(
                f"pool {pool}{conv} {problem} the {height}x{width} map of stage {site.stage}; "
                f"pools that do: {fits}, an input size that makes this map a multiple of {pool}, "
                f"or `fit: pad` to reduce the map zero-padded to one",
                field="pool",
            )

    def _reduction_flops(self, site: Site) -> tuple[int, int]:
        """(the reduction's FLOPs, the number of keys it leaves)."""
        c_in = site.in_shape.channels
        if self.reduction == "adaptive_pool_conv":
            reduced = FeatureShape(c_in, self.pooled_size, self.pooled_size)
            # fvcore's rule for the adaptive pool: one add per input element; GELU counts nothing
            flops = site.in_shape.numel + conv_flops(c_in, c_in, 1, reduced.map_size) + norm_flops(self.reduction_norm, reduced)
            return flops, reduced.height * reduced.width
        pool = self.pool_at(site)
        if pool == 1:
            return 0, site.in_shape.tokens
        padded = fitted_map(site.in_shape, pool, self.fit)  # what the reduction reads
        reduced = FeatureShape(c_in, padded.height // pool, padded.width // pool)
        if self.reduction == "strided_conv":
            flops = conv_flops(c_in, c_in, pool, reduced.map_size) + norm_flops(self.reduction_norm, reduced)
        else:
            flops = padded.numel  # the pooling's sums (`pooled_elements`)
        return flops, reduced.height * reduced.width

    def flops(self, site: Site) -> int:
        c_in, queries = site.in_shape.channels, site.in_shape.tokens
        channels = site.out_channels
        reduction, keys = self._reduction_flops(site)
        return (
            linear_flops(c_in, channels, queries)
            + reduction
            + linear_flops(c_in, 2 * channels, keys)
            + attention_flops(self.heads, queries, keys, channels // self.heads)
            + (linear_flops(channels, channels, queries) if self.output_projection else 0)
        )

    def build(self, site: Site) -> nn.Module:
        return pooled_attention_module(
            site.in_shape.channels,
            site.out_channels,
            self.heads,
            self.pool_at(site),
            self.qkv_bias,
            self.output_projection,
            pads_map(self.fit),
            self.reduction,
            self.reduction_norm,
            self.pooled_size,
        )


# --- window attention --------------------------------------------------------------------------


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) int64: for tokens i = (yi, xi) and j = (yj, xj), the bias-table row
    (yi - yj + window - 1) · (2·window - 1) + (xi - xj + window - 1), as in Swin."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]) + (window - 1)
    return relative[0] * (2 * window - 1) + relative[1]


class WindowAttentionModule(WithoutWeightDecay, CandidateModule):
    """Multi-head self-attention inside non-overlapping windows, with a learned relative
    position bias. With a `shift` = (rows, columns), the map is rolled up and left by it first and
    back after, and `shifted_window_mask` keeps each window's attention inside the regions that
    were neighbours (Swin's SW-MSA). Works channel-last inside, NCHW at its boundary.

    `map_size`: the map the op was placed on (padded where it pads), for which the mask is made
    once; a map of another size gets its own mask when it arrives."""

    without_weight_decay = ("relative_position_bias_table",)

    def __init__(
        self,
        in_channels: int,
        channels: int,
        heads: int,
        window: int,
        input_projection: bool,
        output_projection: bool,
        output_norm: NormName | None,
        pad: bool = False,
        shift: tuple[int, int] = (0, 0),
        map_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.heads, self.window = heads, (window, window)
        self.pad = pad  # zero-pad a map the window does not divide, crop the output back
        self.shift = shift
        self.head_dim = channels // heads
        self.scale = self.head_dim**-0.5
        # MixFormer: the attention branch's own Linear + LayerNorm from the block width to its share
        self.input_projection = nn.Linear(in_channels, channels) if input_projection else None
        self.input_norm = make_token_norm("layer_norm", channels) if input_projection else None
        self.qkv = nn.Linear(channels if input_projection else in_channels, 3 * channels)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # persistent: the released checkpoints carry it
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.projection = nn.Linear(channels, channels) if output_projection else None
        self.output_norm = make_norm(output_norm, channels) if output_norm else None
        # a constant of the geometry, not a weight: never saved, never loaded
        self.mask_map_size = map_size if any(shift) else None
        mask = shifted_window_mask(*map_size, window, shift) if self.mask_map_size else None
        self.register_buffer("shift_mask", mask, persistent=False)

    def window_mask(self, height: int, width: int) -> torch.Tensor:
        """The shifted-window mask for a (padded) height×width map."""
        if self.shift_mask is not None and self.mask_map_size == (height, width):
            return self.shift_mask
        return shifted_window_mask(height, width, self.window[0], self.shift).to(self.relative_position_bias_table.device)

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, _, height, width = x.shape
        shifted = any(self.shift)
        if shifted:  # rolled before padding, as timm does
            x = torch.roll(x, (-self.shift[0], -self.shift[1]), dims=(2, 3))
        if self.pad:
            x = pad_to_multiple(x, self.window[0])
        padded_height, padded_width = x.shape[-2:]
        x = x.permute(0, 2, 3, 1)
        if self.input_projection is not None:
            x = self.input_norm(self.input_projection(x))
        windows = window_partition(x, self.window)
        count, tokens, _ = windows.shape
        query, key, value = (split_heads(part, self.heads) for part in self.qkv(windows).chunk(3, dim=-1))
        if value_gate is not None:
            # one gate per image and value channel, shared by all of the image's windows
            gate = value_gate.reshape(batch, 1, self.heads, 1, self.head_dim)
            value = (value.reshape(batch, count // batch, self.heads, tokens, self.head_dim) * gate).flatten(0, 1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.heads).permute(2, 0, 1)
        if shifted:  # (windows, heads, N, N), the same for every image of the batch
            mask = self.window_mask(padded_height, padded_width)
            bias = (bias + mask[:, None]).repeat(batch, 1, 1, 1)
        out = merge_heads(attend(query, key, value, self.scale, bias))
        if self.projection is not None:
            out = self.projection(out)
        out = window_merge(out, self.window, padded_height, padded_width).permute(0, 3, 1, 2)
        if self.pad:
            out = out[..., :height, :width]
        return torch.roll(out, self.shift, dims=(2, 3)) if shifted else out

    def finish(self, features: torch.Tensor, output_gate: torch.Tensor | None) -> torch.Tensor:
        # the output norm comes after the features that interactions read (MixFormer's spatial
        # interaction reads the attention output before its LayerNorm)
        if output_gate is not None:
            features = features * output_gate
        return self.output_norm(features) if self.output_norm is not None else features


@register
class WindowAttention(AttentionCandidate):
    """Swin-style attention in non-overlapping `window`×`window` windows with a relative
    position bias. `shift`: Swin's shifted windows (SW-MSA): the map is rolled up and left by
    `shift` pixels, attended in windows under Swin's mask (`multihead.shifted_window_mask`:
    tokens that the roll made neighbours do not attend to each other) and rolled back; Swin
    shifts every second block by window // 2. Along a side no longer than the window, where
    one window covers it all, nothing is shifted (Swin's and timm's rule: Swin-T's 7x7 last stage
    at 224). The map must be a multiple of the window: give the
    mixer `pad_multiple` to zero-pad maps it does not divide for every candidate, or `fit` to
    say how the window meets them (`blocks.layers.fit_to_map`): `nearest_divisor` uses the
    divisor of the map nearest to `window`, `pad` zero-pads this op's input to a multiple of
    it (the padded tokens take part unmasked, as in the MixFormer release) and crops its
    output, `divisor_or_pad` pads where no divisor lies within a factor 2 of `window`.

    `input_projection`: first a Linear to `channels` and a LayerNorm (MixFormer's attention
    branch), else qkv reads the input directly (NomMer, Swin). `output_projection`: a Linear
    after the heads are merged (NomMer, Swin). `output_norm`: a norm on the output, applied
    after interactions have read the features (MixFormer's `attn_norm`). Its values can be
    gated per channel (`value_gate`, one gate per image shared by its windows)."""

    op: Literal["window_attention"] = "window_attention"
    capabilities = frozenset({"value_gate"})
    window: PositiveInt = 7
    """window side in tokens"""
    input_projection: bool = False
    """a 1x1 projection before the attention"""
    output_projection: bool = True
    """a linear projection after the attention"""
    output_norm: NormName | None = None
    """a norm on the output (none when null)"""
    fit: FitRule = "exact"
    """how the window meets a map it does not divide: exact (refuse), nearest_divisor (the nearest common divisor of the map sides), pad (zero-pad the map to a multiple), divisor_or_pad"""
    shift: NonNegativeInt = 0
    """shifted windows: roll the map by this many pixels (less than the window; Swin: window // 2 in every second block), 0 for none"""

    def window_at(self, site: Site) -> int:
        return fit_to_map(self.window, site.in_shape.height, site.in_shape.width, self.fit)

    def shift_at(self, site: Site) -> tuple[int, int]:
        """(rows, columns) the map is rolled by: none along a side the window covers."""
        window = self.window_at(site)
        return tuple(self.shift if side > window else 0 for side in site.in_shape.map_size)

    def check(self, site: Site) -> None:
        super().check(site)
        height, width = site.in_shape.map_size
        window = self.window_at(site)
        # a side one window covers is not shifted, so there only the written window bounds the shift
        if self.shift >= self.window or (any(self.shift_at(site)) and self.shift >= window):
            fitted = (
                f" (fit: {self.fit} makes window {self.window} {window} on the {height}x{width} map)"
                if window != self.window
                else ""
            )
            raise OpCheckError(
                f"shift {self.shift} does not fit the window {window}{fitted}: a shift moves the windows by less than "
                f"a window; use 0 to {window - 1} (Swin: window // 2 = {window // 2}), or 0 for no shift",
                field="shift",
            )
        if refuses_map(site.in_shape, window, self.fit):
            fits = common_divisors(height, width)
            raise OpCheckError(
                f"window {self.window} does not divide the {height}x{width} map of stage {site.stage}; give the mixer "
                f"`pad_multiple: {self.window}` to zero-pad it, use a window that divides it: {fits}, "
                f"`fit: nearest_divisor` to pick one of those where it does not, or `fit: pad` to zero-pad this op's map",
                field="window",
            )

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        window = self.window_at(site)
        padded = fitted_map(site.in_shape, window, self.fit)  # what runs up to the crop
        channels, tokens = site.out_channels, padded.height * padded.width
        flops = 0
        if self.input_projection:
            flops += linear_flops(c_in, channels, tokens) + norm_flops("layer_norm", padded.with_channels(channels))
        flops += linear_flops(channels if self.input_projection else c_in, 3 * channels, tokens)
        windows = tokens // window**2
        flops += windows * attention_flops(self.heads, window**2, window**2, channels // self.heads)
        if self.output_projection:
            flops += linear_flops(channels, channels, tokens)
        if self.output_norm:
            flops += norm_flops(self.output_norm, site.in_shape.with_channels(channels))
        return flops

    def build(self, site: Site) -> nn.Module:
        return WindowAttentionModule(
            site.in_shape.channels,
            site.out_channels,
            self.heads,
            self.window_at(site),
            self.input_projection,
            self.output_projection,
            self.output_norm,
            pads_map(self.fit),
            self.shift_at(site),
            fitted_map(site.in_shape, self.window_at(site), self.fit).map_size,
        )
