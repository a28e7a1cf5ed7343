"""SG-Former (Ren et al., "SG-Former: Self-guided Transformer with Evolving Token Reallocation").

Ops: the GroupNorm conv stem with its learnable sin-cos-initialised position embedding, the
conv patch-merging downsample, hybrid-scale attention (which *emits* the significance map as a
side channel) and self-guided attention (which *consumes* it). The LePE branch that joins each
attention before its output projection is the shared `lepe` (fused by the shared
`sum_projection`), the MLP with a residual depthwise conv the shared `dwconv_mlp`, stage 4's
plain attention the shared `pooled_attention` with pool 1. Numerics follow the released code
(OliverRensu/SG-Former @b982803, see shared/reference/official_notes/sgformer.md), not the
paper where they differ; converters/sgformer.py reads its checkpoints.

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
as large), the larger on a tie: `blocks.layers.nearest_divisor`, the rule every op uses.
"""

from __future__ import annotations

import math
from math import prod
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from archdsl.blocks.attention import AttentionCandidate
from archdsl.blocks.layers import (
    GELU,
    StrideFit,
    attention_flops,
    conv_flops,
    divisors,
    fitted_map,
    linear_flops,
    nearest_divisor,
    pads_map,
    refuses_map,
    strided_size,
    two_stride_2_convs,
)
from archdsl.blocks.multihead import (
    PixelLinear,
    SpatialReductionAttention,
    attend,
    map_to_tokens,
    merge_heads,
    split_heads,
    tokens_to_map,
    window_merge,
    window_partition,
)
from archdsl.blocks.position import sincos_position_embedding
from archdsl.network import CandidateModule, pad_to_multiple
from archdsl.norms import NormName, make_norm, make_token_norm, norm_flops
from archdsl.ops import DownsampleOp, FeatureShape, Op, OpCheckError, Site, register
from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing
from archdsl.training import WithoutWeightDecay

# --- derivation of resolution-dependent sizes ---------------------------------------------------


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
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        make_norm("group_norm", out_channels),
    )


class SGFormerStemModule(WithoutWeightDecay, nn.Module):
    without_weight_decay = ("pos_embed",)

    def __init__(self, in_channels: int, channels: int, grid: tuple[int, int], position_embedding: bool):
        super().__init__()
        self.layers = nn.Sequential(
            _conv_norm(in_channels, channels, 3, 2),
            GELU(inplace=True),
            _conv_norm(channels, channels, 3, 1),
            GELU(inplace=True),
            _conv_norm(channels, channels, 3, 2),  # no activation after the last GroupNorm
        )
        self.norm = make_token_norm("layer_norm", channels)  # eps 1e-5 here (the block norms use 1e-6)
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
        return FeatureShape(site.out_channels, *two_stride_2_convs(site.in_shape.map_size))

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels = site.out_channels
        half = FeatureShape(channels, strided_size(height, 3, 2, 1), strided_size(width, 3, 2, 1))
        out = self.output_shape(site)
        convs = (
            conv_flops(c_in, channels, 3, half.map_size)
            + conv_flops(channels, channels, 3, half.map_size)
            + conv_flops(channels, channels, 3, out.map_size)
        )
        return convs + 2 * norm_flops("group_norm", half) + norm_flops("group_norm", out) + norm_flops("layer_norm", out)

    def build(self, site: Site) -> nn.Module:
        out = self.output_shape(site)
        return SGFormerStemModule(site.in_shape.channels, site.out_channels, (out.height, out.width), self.position_embedding)


# --- downsample -----------------------------------------------------------------------------------


class ConvPatchMergingModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: NormName | None):
        super().__init__()
        self.norm = make_norm(norm, in_channels) if norm else nn.Identity()
        self.layers = nn.Sequential(
            _conv_norm(in_channels, out_channels, 1),
            GELU(inplace=True),
            _conv_norm(out_channels, out_channels, 3, 2, groups=out_channels),
            GELU(inplace=True),
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
        height, width = site.in_shape.map_size
        return FeatureShape(site.out_channels, strided_size(height, 3, 2, 1), strided_size(width, 3, 2, 1))

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels = site.out_channels
        out = self.output_shape(site)
        return (
            (norm_flops(self.norm, site.in_shape) if self.norm else 0)
            + conv_flops(c_in, channels, 1, (height, width))
            + norm_flops("group_norm", FeatureShape(channels, height, width))
            + conv_flops(channels, channels, 3, out.map_size, groups=channels)
            + norm_flops("group_norm", out)
            + conv_flops(channels, channels, 1, out.map_size)
            + norm_flops("group_norm", out)
        )

    def build(self, site: Site) -> nn.Module:
        return ConvPatchMergingModule(site.in_shape.channels, site.out_channels, self.norm)


# --- hybrid-scale attention: emits the significance map --------------------------------------------


def _check_even_heads(op: AttentionCandidate, site: Site) -> None:
    AttentionCandidate.check(op, site)
    if op.heads % 2:
        channels = site.out_channels
        fits = [h for h in divisors(channels) if h % 2 == 0]
        raise OpCheckError(
            f"{op.op} splits its heads in two halves, so it needs an even head count, not {op.heads}; "
            f"even head counts that divide its {channels} channels: {fits}",
            field="heads",
        )


class GridMerge(nn.Module):
    """The coarse half's reduction: a `scale`x`scale` stride conv, then LayerNorm and GELU over its
    tokens (run on the row-major tokens, as the code runs them: GELU's last bits depend on the
    layout); returns a channel-last view of the merged map."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.merge = nn.Conv2d(channels, channels, scale, scale)
        self.norm = make_token_norm("layer_norm", channels)  # eps 1e-5, as the code has it
        self.act = GELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.merge(x)
        return self.act(self.norm(map_to_tokens(merged))).transpose(1, 2).unflatten(-1, merged.shape[-2:])


class HybridScaleAttentionModule(CandidateModule):
    """Half the heads attend globally over a `scale`-strided conv-merged grid (a spatial-reduction
    attention), half within windows; returns the concatenated heads (coarse half first) and, if
    `emit`, the significance map (B, H, W): the attention each key receives, averaged over heads
    and queries, the coarse half's upsampled to the map (nearest), plus the windowed half's.
    With `pad`, a map the merge stride does not divide is zero-padded to a multiple of it, both
    halves and the significance map computed there, and both outputs cropped back."""

    def __init__(
        self, in_channels: int, channels: int, heads: int, scale: int, window: tuple[int, int], emit: bool, pad: bool = False
    ):
        super().__init__()
        self.pad = pad
        self.half_heads = heads // 2
        head_dim = channels // heads
        self.scale = head_dim**-0.5
        self.merge_stride = scale
        self.window = window
        self.emit = emit
        self.coarse = SpatialReductionAttention(
            PixelLinear(in_channels, channels // 2),
            GridMerge(in_channels, scale),
            PixelLinear(in_channels, channels),
            self.half_heads,
            head_dim,
        )
        self.window_query = nn.Linear(in_channels, channels // 2)
        self.window_key_value = nn.Linear(in_channels, channels)

    def forward(self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None):
        if not self.pad:
            return self._mix(x)
        height, width = x.shape[-2:]
        mixed = self._mix(pad_to_multiple(x, self.merge_stride))
        if not self.emit:
            return mixed[..., :height, :width]
        out, significance = mixed
        return out[..., :height, :width], significance[..., :height, :width]

    def _mix(self, x: torch.Tensor):
        batch, _, height, width = x.shape
        coarse = self.coarse(x, return_attention_received=self.emit)
        coarse, coarse_received = coarse if self.emit else (coarse, None)

        # fine half: attention within non-overlapping windows
        tokens = map_to_tokens(x)
        query = split_heads(
            window_partition(self.window_query(tokens).unflatten(1, (height, width)), self.window), self.half_heads
        )
        key_value = window_partition(self.window_key_value(tokens).unflatten(1, (height, width)), self.window)
        key, value = (split_heads(part, self.half_heads) for part in key_value.chunk(2, dim=-1))
        fine = attend(query, key, value, self.scale, return_attention_received=self.emit)
        fine, window_received = fine if self.emit else (fine, None)
        fine = window_merge(merge_heads(fine), self.window, height, width).flatten(1, 2)
        out = torch.cat([coarse, tokens_to_map(fine, height, width)], dim=1)  # heads head-major in channels
        if not self.emit:
            return out
        with torch.no_grad():
            grid = (height // self.merge_stride, width // self.merge_stride)
            coarse_map = coarse_received.reshape(batch, 1, *grid)
            coarse_map = F.interpolate(coarse_map, size=(height, width), mode="nearest")[:, 0]
            # window_received: (B·windows, tokens of a window)
            fine_map = window_merge(window_received.unsqueeze(-1), self.window, height, width)[..., 0]
            significance = fine_map + coarse_map
        return out, significance


@register
class HybridScaleAttention(AttentionCandidate):
    """SG-Former's hybrid-scale attention, as the code builds it (two scales in every variant):
    heads 0..h/2-1 attend from every token to a grid merged by a `scale` x `scale` stride conv
    (then LayerNorm, GELU, K/V projection); heads h/2..h-1 attend within windows. It emits the
    significance map (side channel `emits`) for a later self-guided block of the same stage.
    `fit: pad` zero-pads a map `scale` does not divide to a multiple of it (the windows are then
    derived from the padded map) and crops the output and the significance map back."""

    op: Literal["hybrid_scale_attention"] = "hybrid_scale_attention"
    scale: PositiveInt = Field(
        description="merge stride of the coarse half's keys and values (the code's sr_ratio; 1: global attention)"
    )
    window: PositiveInt = Field(
        7, description="preferred window side of the fine half; per side, the nearest divisor of the map side is used"
    )
    emits: str | None = "significance"
    """name of the side channel the significance map is emitted as (null: none)"""
    fit: StrideFit = "exact"
    """how the scale meets a map it does not divide: exact (refuse, as the released code cannot run there) or pad (zero-pad the map to a multiple)"""

    def _padded(self, site: Site) -> FeatureShape:
        """The map both halves run on (padded to a multiple of `scale` where `fit` pads)."""
        return fitted_map(site.in_shape, self.scale, self.fit)

    def windows(self, site: Site) -> tuple[int, int]:
        height, width = self._padded(site).map_size
        return nearest_divisor(height, self.window), nearest_divisor(width, self.window)

    def check(self, site: Site) -> None:
        _check_even_heads(self, site)
        height, width = site.in_shape.map_size
        if refuses_map(site.in_shape, self.scale, self.fit):
            sizes = _input_sizes_that_work(site, lambda side: side % self.scale == 0)
            raise OpCheckError(
                f"scale {self.scale} does not divide the {height}x{width} map of stage {site.stage}: the coarse grid and the "
                f"significance map need map sides that are multiples of {self.scale}; input sizes whose map here fits: {sizes}, a "
                f"scale that divides {math.gcd(height, width)}, or `fit: pad` to zero-pad the map to a multiple",
                field="scale",
            )

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = self._padded(site).map_size  # everything runs before the crop
        channels, tokens = site.out_channels, height * width
        half, head_dim = channels // 2, channels // self.heads
        grid = (height // self.scale) * (width // self.scale)
        wh, ww = self.windows(site)
        merged = FeatureShape(c_in, height // self.scale, width // self.scale)
        coarse = (
            linear_flops(c_in, half, tokens)
            + conv_flops(c_in, c_in, self.scale, merged.map_size)
            + norm_flops("layer_norm", merged)
            + linear_flops(c_in, channels, grid)
            + attention_flops(self.heads // 2, tokens, grid, head_dim)
        )
        fine = (
            linear_flops(c_in, half, tokens)
            + linear_flops(c_in, channels, tokens)
            + attention_flops(self.heads // 2, tokens, wh * ww, head_dim)
        )
        upsample = tokens if self.emits is not None else 0  # fvcore counts the nearest upsample's output elements
        return coarse + fine + upsample

    def build(self, site: Site) -> nn.Module:
        return HybridScaleAttentionModule(
            site.in_shape.channels,
            site.out_channels,
            self.heads,
            self.scale,
            self.windows(site),
            self.emits is not None,
            pads_map(self.fit),
        )


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
        weight_index = np.concatenate(
            [start + np.arange(size) % rate for start, size, rate in zip(weight_start, part_sizes, rates)]
        )
        run_part = np.repeat(np.arange(len(rates)), runs)
        run_start = np.concatenate([[0], np.cumsum(np.repeat(rates, runs))[:-1]])
        self.register_buffer("weight_index", torch.from_numpy(weight_index).long(), persistent=False)
        self.register_buffer("run_start", torch.from_numpy(run_start).long(), persistent=False)
        self.register_buffer("run_part", torch.from_numpy(run_part).long(), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(rates)))
        self.bias = nn.Parameter(torch.empty(len(rates)))
        with torch.no_grad():  # nn.Linear(rate, 1)'s default initialisation, per sub-region
            for part, (start, rate) in enumerate(zip(weight_start.tolist(), rates)):
                nn.init.uniform_(self.weight[start : start + rate], -(rate**-0.5), rate**-0.5)
                nn.init.uniform_(self.bias[part : part + 1], -(rate**-0.5), rate**-0.5)

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


def weighted_bag_flops(inputs, outputs) -> int:
    """fvcore handle for `aten::embedding_bag` with per-sample weights: one multiply-add per
    gathered element (the authors' code computes the same sums with one Linear per run length)."""
    from fvcore.nn.jit_handles import get_shape

    # aten::embedding_bag(weight, indices, offsets, scale_grad_by_freq, mode, sparse, per_sample_weights, ...)
    if inputs[6].type().kind() == "NoneType":
        return 0  # plain sums, uncounted like every other addition
    return prod(get_shape(inputs[1])) * get_shape(inputs[0])[-1]


def significance_orders(significance: torch.Tensor) -> torch.Tensor:
    """(B, H, W) map -> (2, B, H*W) token ids in ascending significance: of the row-major
    flattening, and of the column-major one (as the code sorts both). Stable sorts: ties keep
    their flattening order, so a given input always gives the same output."""
    batch, height, width = significance.shape
    row_order = torch.argsort(significance.reshape(batch, -1), dim=1, stable=True)
    column_rank = torch.argsort(significance.transpose(1, 2).reshape(batch, -1), dim=1, stable=True)
    column_order = (column_rank % height) * width + column_rank // height  # column-major position -> token
    return torch.stack([row_order, column_order])


class SelfGuidedAttentionModule(CandidateModule):
    """All heads query every token; keys and values come from the significance-sorted,
    aggregated tokens: heads 0..h/2-1 from the row-major sort (kv1), h/2..h-1 from the
    column-major sort (kv2). The two orders differ only where the map has ties."""

    def __init__(self, in_channels: int, channels: int, heads: int, part_sizes: list[int], rates: list[int]):
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.query = nn.Linear(in_channels, channels)
        self.row_key_value = nn.Linear(in_channels, channels)
        self.column_key_value = nn.Linear(in_channels, channels)
        self.aggregate = RankAggregation(part_sizes, rates)

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        _, _, height, width = x.shape
        tokens = map_to_tokens(x)
        row_runs, column_runs = self.aggregate(tokens, significance_orders(context.detach())).unbind(0)
        half = self.heads // 2
        row_key, row_value = (split_heads(part, half) for part in self.row_key_value(row_runs).chunk(2, dim=-1))
        column_key, column_value = (split_heads(part, half) for part in self.column_key_value(column_runs).chunk(2, dim=-1))
        key, value = torch.cat([row_key, column_key], dim=1), torch.cat([row_value, column_value], dim=1)
        out = attend(split_heads(self.query(tokens), self.heads), key, value, self.scale)
        return tokens_to_map(merge_heads(out), height, width)


@register
class SelfGuidedAttention(AttentionCandidate):
    """SG-Former's self-guided attention: keys and values from tokens sorted by the significance
    map (side channel `consumes`) and aggregated at a rate per sub-region (IAM)."""

    fvcore_handles = {**AttentionCandidate.fvcore_handles, "aten::embedding_bag": weighted_bag_flops}

    op: Literal["self_guided_attention"] = "self_guided_attention"
    shares: list[PositiveInt] = Field(min_length=1, description="sub-region sizes in proportion, least significant first")
    rates: list[PositiveInt] = Field(
        min_length=1, description="preferred aggregation rate per sub-region; the nearest divisor of its token count is used"
    )
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
        height, width = site.in_shape.map_size
        total = sum(self.shares)
        if (height * width) % total:
            sizes = _input_sizes_that_work(site, lambda side: (side * side) % total == 0)
            divisors = [d for d in range(2, 9) if (height * width) % d == 0]
            raise OpCheckError(
                f"the {height * width} tokens of the {height}x{width} map of stage {site.stage} cannot be cut in shares {self.shares} "
                f"({total} equal units): {height * width} is not a multiple of {total}; input sizes whose map here splits: {sizes}, or shares "
                f"summing to one of {divisors}",
                field="shares",
            )

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        channels, tokens = site.out_channels, height * width
        keys = self.key_tokens(site)
        return (
            linear_flops(c_in, channels, tokens)
            + 2 * tokens * c_in  # query; the two weighted rank aggregations
            + 2 * linear_flops(c_in, channels, keys)
            + attention_flops(self.heads, tokens, keys, channels // self.heads)
        )

    def build(self, site: Site) -> nn.Module:
        sizes, rates = self.layout(site)
        return SelfGuidedAttentionModule(site.in_shape.channels, site.out_channels, self.heads, sizes, rates)


# The authors' evaluation transform (OliverRensu/SG-Former: main.py's resolve_data_config with
# --crop-pct, --mean, --std and --interpolation unset takes the model's default_cfg, which
# sgformer.py sets to timm 0.3.4's vision_transformer._cfg(): crop_pct 0.9, bicubic,
# IMAGENET_DEFAULT_MEAN / STD).
register_preprocessing("sgformer", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.9, interpolation="bicubic"))
