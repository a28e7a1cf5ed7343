"""NomMer (Liu et al., "NomMer: Nominate Synergistic Context in Vision Transformer for Visual Recognition").

Ops: the patch-conv stem, the `compressed_global_attention` (CGCA) context candidate, the `nomination` fusion (the Synergistic Context Nominator), the
`conv_max_pool` reduction (with the shared position embedding and class token of
`blocks.embedding`, which the code adds at stages 3 and 4). The head is the shared
`class_token_head`, the local candidate the shared
`window_attention`, the G-NomMer attention the shared `pooled_attention` (pool 1), the CNN
candidate the shared `bottleneck`, the FFN the shared `mlp`, the DCT the shared `blocks.dct`
primitive. Numerics follow the released code (TencentYoutuResearch/VisualRecognition-NomMer
@6e09b71, see shared/reference/official_notes/nommer.md); converters/nommer.py reads its
checkpoints.

Nomination maps (the paper's Fig. 5 and supplement Fig. 1-2) are observed and drawn by
`archdsl.nominations`.

Token layout: after `conv_max_pool` with `class_token: true` a stage's shape is the h×w map
plus one extra token, the "tokens" layout of `archdsl.ops.FeatureShape` (carried as a
1×(1 + h·w) row, the class token first). Global attention, the norms, the MLP and the fusion
rules declare that they run on tokens; the graph refuses every spatial op there, and
`class_token_head` reads token 0.
"""

from __future__ import annotations

from math import gcd
from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.attention import AttentionCandidate, PooledAttention, pooled_attention_module
from archdsl.blocks.dct import BlockDCT, BlockIDCT, block_dct_flops
from archdsl.blocks.embedding import TokenExtras, TokenExtrasModule
from archdsl.blocks.fusion import FusionOp
from archdsl.blocks.layers import (
    FitRule,
    LayerChains,
    OddKernel,
    common_divisors,
    conv_flops,
    divisors,
    fit_to_map,
    fitted_map,
    linear_flops,
    pads_map,
    refuses_map,
    strided_size,
)
from archdsl.network import CandidateModule, pad_to_multiple
from archdsl.norms import NormName, make_norm, norm_flops
from archdsl.ops import DownsampleOp, FeatureShape, Op, OpCheckError, Site, register
from archdsl.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, register_preprocessing

# --- stem ---------------------------------------------------------------------------------------


class PatchConvStemModule(LayerChains, nn.Module):
    layer_chains = (("conv", "norm", "act"),)

    def __init__(self, in_channels: int, channels: int, patch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, patch, patch, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


@register
class NomMerStem(Op):
    """A `patch`×`patch` conv with stride `patch` and no bias, BatchNorm, ReLU (the paper's
    patch embedding is the conv alone; the code adds the BatchNorm and ReLU)."""

    role = "stem"
    op: Literal["nommer_stem"] = "nommer_stem"
    patch: PositiveInt = 4
    """stride of the patch embedding"""

    def output_shape(self, site: Site) -> FeatureShape:
        return FeatureShape(site.out_channels, *(strided_size(s, self.patch, self.patch, 0) for s in site.in_shape.map_size))

    def flops(self, site: Site) -> int:
        out = self.output_shape(site)
        return conv_flops(site.in_shape.channels, out.channels, self.patch, (out.height, out.width)) + norm_flops(
            "batch_norm", out
        )

    def build(self, site: Site) -> nn.Module:
        return PatchConvStemModule(site.in_shape.channels, site.out_channels, self.patch)


# --- the compressed global context aggregator ---------------------------------------------------


class CompressedGlobalAttentionModule(LayerChains, CandidateModule):
    """Block DCT (low-frequency corner) -> grouped 1x1 compression + BatchNorm -> global
    attention on the compressed map -> grouped 1x1 expansion -> truncated inverse DCT. With
    `pad`, a map the block does not divide is zero-padded to a multiple of it and the output
    cropped back."""

    layer_chains = (("compress", "compress_norm"),)

    def __init__(self, in_channels: int, channels: int, heads: int, block: int, keep: int, groups: int, pad: bool = False):
        super().__init__()
        self.block, self.pad = block, pad
        coefficients = keep * keep
        self.dct = BlockDCT(in_channels, block, keep)
        self.compress = nn.Conv2d(in_channels * coefficients, channels, 1, groups=groups, bias=False)
        self.compress_norm = nn.BatchNorm2d(channels)
        self.attention = pooled_attention_module(channels, channels, heads, 1, qkv_bias=False, output_projection=True)
        self.expand = nn.Conv2d(channels, channels * coefficients, 1, groups=groups, bias=False)
        self.idct = BlockIDCT(channels, block, keep)

    def forward(
        self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.pad:
            x = pad_to_multiple(x, self.block)
        x = self.compress_norm(self.compress(self.dct(x)))
        out = self.idct(self.expand(self.attention(x)))
        return out[..., :height, :width] if self.pad else out


@register
class CompressedGlobalAttention(AttentionCandidate):
    """NomMer's Compressed Global Context Aggregator (CGCA). Every channel is cut into
    `block`×`block` tiles; each tile's 2-D DCT keeps its `keep`×`keep` low-frequency corner
    (default (block+1)//2, the code's rule; the paper's ⌊αN⌋ with α = 0.5 for even blocks);
    a 1x1 conv with `groups` groups compresses the coefficients to `channels` (BatchNorm, no
    activation); global attention (no qkv bias, output Linear) runs on the (H/block)×(W/block)
    map; a grouped 1x1 conv expands back to `keep`² coefficients per channel and the inverse
    DCT, with the dropped frequencies as zeros, restores the map size.

    The block must divide the map: at 224, NomMer uses 8 on 56x56 and 4 on 28x28, so both
    stages attend over 7x7 tokens. `fit` says how it meets a map it does not divide
    (`blocks.layers.fit_to_map`): `nearest_divisor` uses the divisor of the map nearest to
    `block`, `pad` zero-pads the map to a multiple of it (the edge tiles' DCTs see zeros) and
    crops the output, `divisor_or_pad` pads where no divisor lies within a factor 2 of `block`."""

    op: Literal["compressed_global_attention"] = "compressed_global_attention"
    block: PositiveInt = 8
    """DCT block side in pixels"""
    keep: PositiveInt | None = None
    """DCT frequencies kept per axis (default: block / 2)"""
    groups: PositiveInt = 8
    """groups of the conv on the DCT coefficients"""
    fit: FitRule = "exact"
    """how the block meets a map it does not divide: exact (refuse), nearest_divisor (the nearest common divisor of the map sides), pad (zero-pad the map to a multiple), divisor_or_pad"""

    def block_at(self, site: Site) -> int:
        return fit_to_map(self.block, site.in_shape.height, site.in_shape.width, self.fit)

    def keep_at(self, site: Site) -> int:
        return self.keep if self.keep is not None else (self.block_at(site) + 1) // 2

    def _padded(self, site: Site) -> FeatureShape:
        """The map the DCT tiles: padded to a multiple of the block where `fit` pads."""
        return fitted_map(site.in_shape, self.block_at(site), self.fit)

    def _compressed(self, site: Site) -> FeatureShape:
        block, padded = self.block_at(site), self._padded(site)
        return FeatureShape(site.out_channels, padded.height // block, padded.width // block)

    def _attention(self) -> PooledAttention:
        return PooledAttention(heads=self.heads, pool=1, qkv_bias=False, output_projection=True)

    def check(self, site: Site) -> None:
        super().check(site)
        c_in = site.in_shape.channels
        height, width = site.in_shape.map_size
        block = self.block_at(site)
        if refuses_map(site.in_shape, block, self.fit):
            fits = common_divisors(height, width)
            raise OpCheckError(
                f"DCT block {self.block} does not divide the {height}x{width} map of stage {site.stage}; blocks that do: "
                f"{fits}, `fit: nearest_divisor` to pick one of those where it does not, or `fit: pad` to zero-pad the map",
                field="block",
            )
        keep = self.keep_at(site)
        if keep > block:
            raise OpCheckError(
                f"keep {keep} frequencies per axis, but a {block}x{block} block has only {block}; use keep <= {block}",
                field="keep",
            )
        coefficients = keep * keep
        for what, count in (("the DCT coefficients", c_in * coefficients), ("the candidate's channels", site.out_channels)):
            if count % self.groups:
                fits = divisors(gcd(site.out_channels, c_in * coefficients))
                raise OpCheckError(
                    f"{self.groups} groups do not divide {what} ({count}); groups that divide both "
                    f"{c_in * coefficients} coefficients and {site.out_channels} channels: {fits}",
                    field="groups",
                )

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        height, width = self._padded(site).map_size  # the DCT and its inverse run before the crop
        channels = site.out_channels
        keep = self.keep_at(site)
        coefficients = keep * keep
        small = self._compressed(site)
        hw = (small.height, small.width)
        attention = self._attention().flops(Site(small, channels, site.image_size, site.stage))
        return (
            block_dct_flops(c_in, keep, height, width)
            + conv_flops(c_in * coefficients, channels, 1, hw, groups=self.groups)
            + norm_flops("batch_norm", small)
            + attention
            + conv_flops(channels, channels * coefficients, 1, hw, groups=self.groups)
            + block_dct_flops(channels, keep, height, width)
        )

    def build(self, site: Site) -> nn.Module:
        return CompressedGlobalAttentionModule(
            site.in_shape.channels,
            site.out_channels,
            self.heads,
            self.block_at(site),
            self.keep_at(site),
            self.groups,
            pads_map(self.fit),
        )


# --- the nominator ------------------------------------------------------------------------------

GUMBEL_EPS = 1e-20  # the released code's


def straight_through_gumbel(logits: torch.Tensor, temperature: float, hard: bool = True) -> torch.Tensor:
    """Gumbel-softmax over the last axis, drawn on the logits' device in float32 (so it works
    under autocast, where the released code's AMP concern came from). `hard`: the forward value
    is the one-hot of the sample's argmax, the gradient that of the soft sample."""
    uniform = torch.rand(logits.shape, device=logits.device, dtype=torch.float32)
    noise = -torch.log(-torch.log(uniform + GUMBEL_EPS) + GUMBEL_EPS)
    soft = torch.softmax((logits.float() + noise) / temperature, dim=-1)
    if not hard:
        return soft.to(logits.dtype)
    one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    return ((one_hot - soft).detach() + soft).to(logits.dtype)


class NominationChoice(nn.Module):
    """Nomination logits (B, H, W, K) -> per-pixel weights of the K candidates (B, H, W, K).

    Training: a straight-through Gumbel-softmax sample. Eval: 1 where a logit equals its
    pixel's maximum, else 0, exactly as the released code (an exact tie selects every tied
    candidate, and their outputs are then summed). Its output is what `nomination_maps` records."""

    def __init__(self, temperature: float, hard: bool):
        super().__init__()
        self.temperature, self.hard = temperature, hard

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.training:
            return straight_through_gumbel(logits, self.temperature, self.hard)
        return (logits == logits.amax(dim=-1, keepdim=True)).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hard={self.hard}"


class NominationModule(nn.Module):
    def __init__(self, channels: int, candidates: int, temperature: float, hard: bool):
        super().__init__()
        self.fc = nn.Linear(channels, candidates)
        self.choice = NominationChoice(temperature, hard)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        total = parts[0]
        for part in parts[1:]:
            total = total + part  # ((x1 + x2) + x3), as the released code sums
        weights = self.choice(self.fc(total.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # (B, K, H, W)
        # the weighted sum term by term, in the released code's order (its sum over the stacked
        # candidates adds them one after another): a sum over a stacked dim of channels-last maps
        # took 9x the time of these adds
        mixed = parts[0] * weights[:, :1]
        for index, part in enumerate(parts[1:], start=1):
            mixed = mixed + part * weights[:, index : index + 1]
        return mixed


@register
class Nomination(FusionOp):
    """NomMer's Synergistic Context Nominator: per pixel, a Linear over the sum of the
    candidates gives one logit per candidate, and one candidate is nominated. Training: a
    straight-through Gumbel-softmax sample at `temperature` (`hard: false`: the soft sample,
    the paper's ablation); eval: the argmax, exact ties selecting (and summing) every tied
    candidate, as the released code does. Every candidate must have the block width. All
    candidates run at every pixel: nomination saves no compute."""

    op: Literal["nomination"] = "nomination"
    capabilities = frozenset({"runs_on_tokens"})
    temperature: float = 1.0
    """softmax temperature of the per-pixel nomination"""
    hard: bool = True
    """hard (one-hot, straight-through) nomination instead of a soft mix"""

    def check(self, site: Site) -> None:
        if not self.temperature > 0:
            raise OpCheckError(
                f"temperature {self.temperature} must be > 0: the Gumbel-softmax divides its logits by it "
                f"(the released code uses 1.0)",
                field="temperature",
            )
        if len(site.parts) < 2:
            raise OpCheckError("nomination chooses among candidates; give the mixer at least two")
        if any(part != site.out_channels for part in site.parts):
            raise OpCheckError(
                f"nomination picks one candidate's output per pixel, so every candidate must have the block width "
                f"{site.out_channels}, but they have {list(site.parts)} channels; give every candidate "
                f"channels: {site.out_channels} (or leave `channels` out), or fuse with concat_projection"
            )

    def flops(self, site: Site) -> int:
        return linear_flops(site.out_channels, len(site.parts), site.in_shape.tokens)

    def build(self, site: Site) -> nn.Module:
        return NominationModule(site.out_channels, len(site.parts), self.temperature, self.hard)


# --- the reduction module -----------------------------------------------------------------------


class ConvMaxPoolModule(TokenExtrasModule):
    def __init__(
        self,
        in_channels: int,
        out: FeatureShape,
        kernel: int,
        pool: int,
        norm: NormName,
        position_embedding: bool | Literal["map"],
        class_token: bool,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out.channels, kernel, 1, kernel // 2)
        self.pool = nn.MaxPool2d(pool)
        self.norm = make_norm(norm, out.channels)
        # standard-normal initialisation, as the released code's (bare randn parameters)
        self.init_token_extras(out, position_embedding, class_token, position_std=1.0, class_token_std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the released code convolves a contiguous NCHW copy; the CPU conv kernel, and so the
        # last bits, depend on the memory layout
        return self.add_token_extras(self.norm(self.pool(self.conv(x.contiguous()))))


@register
class ConvMaxPool(TokenExtras, DownsampleOp):
    """NomMer's reduction module: a `kernel`×`kernel` conv (stride 1, with bias) that widens at
    full resolution, a `pool`×`pool` max-pool, a norm, then the shared `TokenExtras`
    (`blocks.embedding`). NomMer adds a learned `position_embedding` of the pooled map's size
    before stage 3 (sized from the map, so it follows the input size) and a `class_token`
    before stage 4, making a 1×(1 + h·w) token sequence."""

    op: Literal["conv_max_pool"] = "conv_max_pool"
    kernel: OddKernel = 3
    """kernel of the conv before pooling (odd)"""
    pool: PositiveInt = 2
    """max-pool side and stride"""
    norm: NormName = "layer_norm"
    """norm after pooling"""

    def _pooled(self, site: Site) -> FeatureShape:
        height, width = site.in_shape.map_size
        return FeatureShape(site.out_channels, height // self.pool, width // self.pool)

    def output_shape(self, site: Site) -> FeatureShape:
        return self.with_extras(self._pooled(site))

    def check(self, site: Site) -> None:
        if min(site.in_shape.height, site.in_shape.width) < self.pool:
            raise OpCheckError(
                f"the {site.in_shape.height}x{site.in_shape.width} map entering stage {site.stage} is "
                f"smaller than the {self.pool}x{self.pool} pool; use a larger input size",
                field="pool",
            )

    def flops(self, site: Site) -> int:
        height, width = site.in_shape.map_size
        # the max-pool's comparisons are not multiply-adds (fvcore skips them too)
        return conv_flops(site.in_shape.channels, site.out_channels, self.kernel, (height, width)) + norm_flops(
            self.norm, self._pooled(site)
        )

    def build(self, site: Site) -> nn.Module:
        return ConvMaxPoolModule(
            site.in_shape.channels,
            self.output_shape(site),
            self.kernel,
            self.pool,
            self.norm,
            self.position_embedding,
            self.class_token,
        )


# The authors' evaluation transform (TencentYoutuResearch/VisualRecognition-NomMer: config.py
# DATA.INTERPOLATION "bicubic" and TEST.CROP True; data/build.py resizes to int(256/224 * size),
# centre-crops to size and normalises with timm's IMAGENET_DEFAULT_MEAN / STD).
register_preprocessing("nommer", Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875, interpolation="bicubic"))
