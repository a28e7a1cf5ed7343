"""NomMer (Liu et al., "NomMer: Nominate Synergistic Context in Vision Transformer for Visual Recognition").

Ops: the patch-conv stem, the `bottleneck` (CNN) and `compressed_global_attention` (CGCA)
context candidates, the `nomination` fusion (the Synergistic Context Nominator), the
`conv_max_pool` reduction (with the position embedding and class token the code adds at
stages 3 and 4), and the `class_token_head`. The local candidate is the shared
`window_attention`, the G-NomMer attention the shared `pooled_attention` (pool 1), the FFN the
shared `mlp`, the DCT the shared `blocks.dct` primitive. Numerics follow the released code
(TencentYoutuResearch/VisualRecognition-NomMer @6e09b71, see
shared/reference/official_notes/nommer.md); the converter below reads its checkpoints.

Nomination maps (the paper's Fig. 5 and supplement Fig. 1-2) are observable with
`nomination_maps(model, x)` and written as a PNG with `save_nomination_maps(model, image, path)`.

Token layout: after `conv_max_pool` with `class_token: true` a stage works on a token
sequence, carried between nodes as a 1×(1 + h·w) map: the class token first, then the h·w
pixels row-major. Global attention, LayerNorm and the MLP are blind to the layout, and
`class_token_head` reads token 0.
"""

from __future__ import annotations

import re
from math import gcd
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from archdsl.ops import CandidateOp, DownsampleOp, FeatureShape, Op, OpCheckError, Site, register
from archdsl.weights import index_of, register_converter, rename_by_table
from archdsl.blocks.attention import AttentionCandidate, PooledAttention, PooledAttentionModule, WindowAttentionModule
from archdsl.blocks.dct import BlockDCT, BlockIDCT, block_dct_flops
from archdsl.blocks.fusion import FusionOp
from archdsl.blocks.heads import HeadOp
from archdsl.blocks.layers import FitRule, OddKernel, common_divisors, conv_flops, divisors, fit_to_map, linear_flops, strided_size
from archdsl.blocks.norms import NormName, make_norm, norm_flops


# --- stem ---------------------------------------------------------------------------------------


class PatchConvStemModule(nn.Module):
    def __init__(self, in_channels: int, channels: int, patch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, patch, patch, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

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
        return FeatureShape(site.out_channels, *(strided_size(s, self.patch, self.patch, 0) for s in site.in_shape[1:]))

    def flops(self, site: Site) -> int:
        out = self.output_shape(site)
        return conv_flops(site.in_shape.channels, out.channels, self.patch, (out.height, out.width)) + norm_flops("batch_norm", out)

    def build(self, site: Site) -> nn.Module:
        return PatchConvStemModule(site.in_shape.channels, site.out_channels, self.patch)


# --- the CNN candidate: a ResNet bottleneck ----------------------------------------------------


class BottleneckModule(nn.Module):
    """relu(x + BN(conv1x1(relu(BN(conv3x3(relu(BN(conv1x1(x))))))))), all convs without bias."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        # the shortcut adds the candidate's input: in a block, the normalised map
        return F.relu(self.bn3(self.conv3(out)) + x)


@register
class Bottleneck(CandidateOp):
    """Local context by a ResNet bottleneck (1x1, 3x3, 1x1 convs at width channels/`expansion`,
    BatchNorm after each, ReLU) with its own shortcut from its input and a final ReLU, so its
    output is never negative. NomMer's CNN candidate: the paper gives the three convs, the code
    the rest. Its output has the input's width."""

    op: Literal["bottleneck"] = "bottleneck"
    expansion: PositiveInt = 4
    """hidden channels = expansion x channels"""

    def check(self, site: Site) -> None:
        if site.out_channels != site.in_shape.channels:
            raise OpCheckError(f"the bottleneck adds its input back, so it must keep the block width "
                               f"{site.in_shape.channels}; found channels: {site.out_channels}", field="channels")
        if site.out_channels < self.expansion:
            raise OpCheckError(f"expansion {self.expansion} leaves no channels of {site.out_channels}; "
                               f"use at most {site.out_channels}", field="expansion")

    def flops(self, site: Site) -> int:
        channels, height, width = site.in_shape
        inner, hw = channels // self.expansion, (height, width)
        convs = conv_flops(channels, inner, 1, hw) + conv_flops(inner, inner, 3, hw) + conv_flops(inner, channels, 1, hw)
        return convs + 2 * norm_flops("batch_norm", FeatureShape(inner, height, width)) + norm_flops("batch_norm", site.in_shape)

    def build(self, site: Site) -> nn.Module:
        return BottleneckModule(site.out_channels, site.out_channels // self.expansion)


# --- the compressed global context aggregator ---------------------------------------------------


class CompressedGlobalAttentionModule(nn.Module):
    """Block DCT (low-frequency corner) -> grouped 1x1 compression + BatchNorm -> global
    attention on the compressed map -> grouped 1x1 expansion -> truncated inverse DCT."""

    def __init__(self, in_channels: int, channels: int, heads: int, block: int, keep: int, groups: int):
        super().__init__()
        coefficients = keep * keep
        self.dct = BlockDCT(in_channels, block, keep)
        self.compress = nn.Conv2d(in_channels * coefficients, channels, 1, groups=groups, bias=False)
        self.compress_norm = nn.BatchNorm2d(channels)
        self.attention = PooledAttentionModule(channels, channels, heads, 1, qkv_bias=False, output_projection=True)
        self.expand = nn.Conv2d(channels, channels * coefficients, 1, groups=groups, bias=False)
        self.idct = BlockIDCT(channels, block, keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.compress_norm(self.compress(self.dct(x)))
        return self.idct(self.expand(self.attention(x)))


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
    stages attend over 7x7 tokens. `fit: nearest_divisor` uses the divisor of the map nearest
    to `block` where it does not divide (`blocks.layers.fit_to_map`)."""

    op: Literal["compressed_global_attention"] = "compressed_global_attention"
    block: PositiveInt = 8
    """DCT block side in pixels"""
    keep: PositiveInt | None = None
    """DCT frequencies kept per axis (default: block / 2)"""
    groups: PositiveInt = 8
    """groups of the conv on the DCT coefficients"""
    fit: FitRule = "exact"
    """exact: the block must divide the map; nearest_divisor: the common divisor of the map sides nearest to it"""

    def block_at(self, site: Site) -> int:
        return fit_to_map(self.block, site.in_shape.height, site.in_shape.width, self.fit)

    def keep_at(self, site: Site) -> int:
        return self.keep if self.keep is not None else (self.block_at(site) + 1) // 2

    def _compressed(self, site: Site) -> FeatureShape:
        block = self.block_at(site)
        return FeatureShape(site.out_channels, site.in_shape.height // block, site.in_shape.width // block)

    def _attention(self) -> PooledAttention:
        return PooledAttention(heads=self.heads, pool=1, qkv_bias=False, output_projection=True)

    def check(self, site: Site) -> None:
        super().check(site)
        c_in, height, width = site.in_shape
        block = self.block_at(site)
        if height % block or width % block:
            fits = common_divisors(height, width)
            raise OpCheckError(
                f"DCT block {self.block} does not divide the {height}x{width} map of stage {site.stage}; blocks that do: "
                f"{fits}, or `fit: nearest_divisor` to pick one of those where it does not", field="block")
        keep = self.keep_at(site)
        if keep > block:
            raise OpCheckError(f"keep {keep} frequencies per axis, but a {block}x{block} block has only {block}; "
                               f"use keep <= {block}", field="keep")
        coefficients = keep * keep
        for what, count in (("the DCT coefficients", c_in * coefficients), ("the candidate's channels", site.out_channels)):
            if count % self.groups:
                fits = divisors(gcd(site.out_channels, c_in * coefficients))
                raise OpCheckError(f"{self.groups} groups do not divide {what} ({count}); groups that divide both "
                                   f"{c_in * coefficients} coefficients and {site.out_channels} channels: {fits}", field="groups")

    def flops(self, site: Site) -> int:
        c_in, height, width = site.in_shape
        channels = site.out_channels
        keep = self.keep_at(site)
        coefficients = keep * keep
        small = self._compressed(site)
        hw = (small.height, small.width)
        attention = self._attention().flops(Site(small, channels, site.image_size, site.stage))
        return (block_dct_flops(c_in, keep, height, width)
                + conv_flops(c_in * coefficients, channels, 1, hw, groups=self.groups) + norm_flops("batch_norm", small)
                + attention
                + conv_flops(channels, channels * coefficients, 1, hw, groups=self.groups)
                + block_dct_flops(channels, keep, height, width))

    def build(self, site: Site) -> nn.Module:
        return CompressedGlobalAttentionModule(site.in_shape.channels, site.out_channels, self.heads, self.block_at(site),
                                               self.keep_at(site), self.groups)


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
        weights = self.choice(self.fc(total.permute(0, 2, 3, 1)))  # (B, H, W, K)
        stacked = torch.stack(parts, dim=1)  # (B, K, C, H, W)
        return (stacked * weights.permute(0, 3, 1, 2).unsqueeze(2)).sum(dim=1)


@register
class Nomination(FusionOp):
    """NomMer's Synergistic Context Nominator: per pixel, a Linear over the sum of the
    candidates gives one logit per candidate, and one candidate is nominated. Training: a
    straight-through Gumbel-softmax sample at `temperature` (`hard: false`: the soft sample,
    the paper's ablation); eval: the argmax, exact ties selecting (and summing) every tied
    candidate, as the released code does. Every candidate must have the block width. All
    candidates run at every pixel: nomination saves no compute."""

    op: Literal["nomination"] = "nomination"
    temperature: float = 1.0
    """softmax temperature of the per-pixel nomination"""
    hard: bool = True
    """hard (one-hot, straight-through) nomination instead of a soft mix"""

    def check(self, site: Site) -> None:
        if not self.temperature > 0:
            raise OpCheckError(f"temperature {self.temperature} must be > 0: the Gumbel-softmax divides its logits by it "
                               f"(the released code uses 1.0)", field="temperature")
        if len(site.parts) < 2:
            raise OpCheckError("nomination chooses among candidates; give the mixer at least two")
        if any(part != site.out_channels for part in site.parts):
            raise OpCheckError(
                f"nomination picks one candidate's output per pixel, so every candidate must have the block width "
                f"{site.out_channels}, but they have {list(site.parts)} channels; give every candidate "
                f"channels: {site.out_channels} (or leave `channels` out), or fuse with concat_projection")

    def flops(self, site: Site) -> int:
        return linear_flops(site.out_channels, len(site.parts), site.in_shape.tokens)

    def build(self, site: Site) -> nn.Module:
        return NominationModule(site.out_channels, len(site.parts), self.temperature, self.hard)


# --- the reduction module -----------------------------------------------------------------------


class ConvMaxPoolModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, pool: int, norm: NormName,
                 position_embedding: tuple[int, int] | None, class_token: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2)
        self.pool = nn.MaxPool2d(pool)
        self.norm = make_norm(norm, out_channels)
        # standard-normal initialisation, as the released code's (bare randn parameters)
        self.position_embedding = nn.Parameter(torch.randn(1, out_channels, *position_embedding)) if position_embedding else None
        self.class_token = nn.Parameter(torch.randn(1, out_channels, 1, 1)) if class_token else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the released code convolves a contiguous NCHW copy; the CPU conv kernel, and so the
        # last bits, depend on the memory layout
        x = self.norm(self.pool(self.conv(x.contiguous())))
        if self.position_embedding is not None:
            x = x + self.position_embedding
        if self.class_token is not None:
            tokens = x.flatten(2).unsqueeze(2)  # (B, C, 1, h·w), row-major
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1, -1), tokens], dim=3)
        return x


@register
class ConvMaxPool(DownsampleOp):
    """NomMer's reduction module: a `kernel`×`kernel` conv (stride 1, with bias) that widens at
    full resolution, a `pool`×`pool` max-pool, a norm. `position_embedding`: then add a learned
    embedding of the pooled map's size (NomMer before stage 3; sized from the map, so it
    follows the input size). `class_token`: then flatten the map row-major and put a learned
    class token first, making a 1×(1 + h·w) token sequence (NomMer before stage 4)."""

    op: Literal["conv_max_pool"] = "conv_max_pool"
    kernel: OddKernel = 3
    """kernel of the conv before pooling (odd)"""
    pool: PositiveInt = 2
    """max-pool side and stride"""
    norm: NormName = "layer_norm"
    """norm after pooling"""
    position_embedding: bool = False
    """a learnable position embedding"""
    class_token: bool = False
    """a class token prepended to the tokens"""

    def _pooled(self, site: Site) -> FeatureShape:
        _, height, width = site.in_shape
        return FeatureShape(site.out_channels, height // self.pool, width // self.pool)

    def output_shape(self, site: Site) -> FeatureShape:
        pooled = self._pooled(site)
        return FeatureShape(pooled.channels, 1, 1 + pooled.tokens) if self.class_token else pooled

    def check(self, site: Site) -> None:
        if min(site.in_shape.height, site.in_shape.width) < self.pool:
            raise OpCheckError(f"the {site.in_shape.height}x{site.in_shape.width} map entering stage {site.stage} is "
                               f"smaller than the {self.pool}x{self.pool} pool; use a larger input size", field="pool")

    def flops(self, site: Site) -> int:
        _, height, width = site.in_shape
        # the max-pool's comparisons are not multiply-adds (fvcore skips them too)
        return conv_flops(site.in_shape.channels, site.out_channels, self.kernel, (height, width)) + norm_flops(self.norm, self._pooled(site))

    def build(self, site: Site) -> nn.Module:
        pooled = self._pooled(site)
        return ConvMaxPoolModule(site.in_shape.channels, site.out_channels, self.kernel, self.pool, self.norm,
                                 (pooled.height, pooled.width) if self.position_embedding else None, self.class_token)


# --- head ---------------------------------------------------------------------------------------


class ClassTokenHeadModule(nn.Module):
    def __init__(self, channels: int, classes: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-5) if norm else nn.Identity()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.flatten(2)[:, :, 0]))


@register
class ClassTokenHead(HeadOp):
    """LayerNorm and a linear classifier on token 0, the class token that `conv_max_pool`
    with `class_token: true` puts first (no pooling), as NomMer's head."""

    op: Literal["class_token_head"] = "class_token_head"
    norm: Literal["layer_norm"] | None = "layer_norm"
    """a LayerNorm on the class token before the classifier (none when null)"""

    def flops(self, site: Site) -> int:
        channels = site.in_shape.channels
        return (norm_flops("layer_norm", FeatureShape(channels, 1, 1)) if self.norm else 0) + linear_flops(channels, self.classes)

    def build(self, site: Site) -> nn.Module:
        return ClassTokenHeadModule(site.in_shape.channels, self.classes, self.norm is not None)


# --- nomination maps ----------------------------------------------------------------------------

# candidate k of a nomination is drawn in colour k: NomMer's specs list the CNN, local and
# global candidates in this order, the paper's red, green and blue
NOMINATION_COLORS = ((1.0, 0.0, 0.0), (0.0, 0.8, 0.0), (0.0, 0.0, 1.0), (1.0, 0.85, 0.0), (1.0, 0.0, 1.0), (0.0, 0.9, 0.9))


def nomination_maps(model: nn.Module, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """Run `model` once on `x` (no gradients, in its current mode) and return every
    nomination's per-pixel choice, in execution order: block name (`stages.0.blocks.1`) ->
    (B, K, H, W) float weights, channel k for candidate k. In eval mode these are 0/1 (one 1
    per pixel; several on an exact tie); in training mode the Gumbel-softmax samples.
    `.argmax(1)` gives the chosen candidate's index. Forward hooks; nothing about the model
    changes. Maps a mixer padded are cropped to the block's input size."""
    maps: OrderedDict[str, torch.Tensor] = OrderedDict()
    sizes: dict[str, tuple[int, int]] = {}
    handles = []

    def record_size(name, module, args):
        sizes[name] = tuple(args[0].shape[-2:])

    def record_choice(name, module, args, output):
        height, width = sizes[name]
        maps[name] = output.permute(0, 3, 1, 2)[:, :, :height, :width].detach()

    for name, module in model.named_modules():
        if isinstance(module, NominationModule) and name.endswith(".mixer.fusion"):
            block = name[: -len(".mixer.fusion")]
            handles.append(model.get_submodule(f"{block}.mixer").register_forward_pre_hook(partial(record_size, block)))
            handles.append(module.choice.register_forward_hook(partial(record_choice, block)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def layer_label(block: str) -> str:
    """`stages.0.blocks.1` -> `Layer 1_2`, the paper's name for that layer."""
    stage, index = (int(n) for n in re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)", block).groups())
    return f"Layer {stage + 1}_{index + 1}"


def colour_map(weights: torch.Tensor, colors=NOMINATION_COLORS) -> torch.Tensor:
    """(K, H, W) candidate weights -> (H, W, 3) RGB in [0, 1]: candidate k in colour k (an
    exact tie mixes the tied colours)."""
    palette = torch.tensor(colors[: weights.shape[0]], dtype=torch.float32)
    if palette.shape[0] < weights.shape[0]:
        raise ValueError(f"{weights.shape[0]} candidates but only {palette.shape[0]} colours; pass more colors=")
    return torch.einsum("khw,kc->hwc", weights.float().cpu(), palette).clamp(0, 1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file -> a (1, 3, H, W) ImageNet-normalised tensor: shorter side resized to
    size/0.875, centre crop (the usual evaluation transform)."""
    from PIL import Image
    import numpy as np

    image = Image.open(path).convert("RGB")
    scale = max(size) / 0.875 / min(image.size)
    image = image.resize((max(size[1], round(image.size[0] * scale)), max(size[0], round(image.size[1] * scale))), Image.BICUBIC)
    left, top = (image.size[0] - size[1]) // 2, (image.size[1] - size[0]) // 2
    image = image.crop((left, top, left + size[1], top + size[0]))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((tensor - mean) / std).unsqueeze(0)


def save_nomination_maps(model: nn.Module, image, path: str | Path, colors=NOMINATION_COLORS) -> "OrderedDict[str, torch.Tensor]":
    """Write the input image and each nominating layer's map side by side as a PNG at `path`
    (candidate k in colour k: for NomMer red = CNN, green = local, blue = global, as in the
    paper) and return the maps (see `nomination_maps`).

    `image`: an image file (resized and normalised for the model's input size, see
    `load_image`) or a preprocessed (1, 3, H, W) tensor. The model runs in its current mode;
    call `model.eval()` first for the deterministic argmax maps."""
    # a bare Figure (no pyplot): draws off-screen without touching the caller's matplotlib backend
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if isinstance(image, (str, Path)):
        spec = getattr(model, "spec", None)
        size = spec.image_size if spec is not None else (224, 224)
        image = load_image(image, size)
    if image.ndim == 3:
        image = image.unsqueeze(0)
    maps = nomination_maps(model, image)
    if not maps:
        raise ValueError("this model has no nomination fusion: there are no nomination maps to draw")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    shown = (image[0].detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0)

    panels = [("input", shown)] + [(layer_label(name), colour_map(weights[0], colors)) for name, weights in maps.items()]
    columns = min(len(panels), 5)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (title, picture) in zip(axes.flat, panels):
        axis.imshow(picture.numpy(), interpolation="nearest")
        axis.set_title(title, fontsize=9)
    names = _candidate_names(model, next(iter(maps)))
    figure.legend(handles=[Patch(color=colors[k], label=name) for k, name in enumerate(names)],
                  loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=100)
    return maps


def _candidate_names(model: nn.Module, block: str) -> list[str]:
    spec = getattr(model, "spec", None)
    mixer = model.get_submodule(f"{block}.mixer")
    if spec is None:
        return [f"candidate {k}" for k in range(len(mixer.candidates))]
    stage, index = (int(n) for n in re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)", block).groups())
    return [candidate.op for candidate in spec.block_at(stage, index).mixer.candidates]


# --- the authors' checkpoints ------------------------------------------------------------------


@register_converter("nommer")
def convert_nommer(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Official names (transformer1.layers.0.0.fn.attentionG.dw, ...) -> this project's.

    The global attention's fused `to_qkv` Linear is split into the query and key/value 1x1
    convs; Linear weights that are 1x1 convs here are reshaped; the position embedding and the
    class token are stored channel-first here."""
    expected = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for name, part in _rename(key, value, net):
            target = expected.get(name)
            if target is not None and part.ndim == 2 and target.ndim == 4:
                part = part.reshape(*part.shape, 1, 1)
            converted[name] = part
    return converted


def _downsample_with(net: nn.Module, flag: str) -> str | None:
    for index, stage in enumerate(net.stages):
        if getattr(stage.downsample, flag, None) is not None:
            return f"stages.{index}.downsample.{flag}"
    return None


# a mixer's official names (after `fn.`) -> (the candidate module kind, its name there); QKV:
# the fused to_qkv weight, split into the query and key/value projections
_MIXER_KEYS = [
    (r"cnn\.(.+)", BottleneckModule, r"\1"),
    (r"attention\.proj\.(.+)", WindowAttentionModule, r"projection.\1"),
    (r"attention\.(.+)", WindowAttentionModule, r"\1"),
    (r"attentionG\.dct_conv_8x8\.(.+)", CompressedGlobalAttentionModule, r"dct.\1"),
    (r"attentionG\.idct_conv\.0\.(.+)", CompressedGlobalAttentionModule, r"idct.\1"),
    (r"attentionG\.dw\.(.+)", CompressedGlobalAttentionModule, r"compress.\1"),
    (r"attentionG\.bn1\.(.+)", CompressedGlobalAttentionModule, r"compress_norm.\1"),
    (r"attentionG\.up\.(.+)", CompressedGlobalAttentionModule, r"expand.\1"),
    (r"attentionG\.attn\.to_qkv\.weight", CompressedGlobalAttentionModule, "attention.QKV"),
    (r"attentionG\.attn\.to_out\.0\.(.+)", CompressedGlobalAttentionModule, r"attention.projection.\1"),
    (r"to_qkv\.weight", PooledAttentionModule, "QKV"),
    (r"to_out\.0\.(.+)", PooledAttentionModule, r"projection.\1"),
]


# official name pattern -> this project's name, outside the blocks
_NETWORK_NAMES = (
    (r"cnn1\.(.+)", lambda m: f"stem.conv.{m[1]}"),
    (r"bn1\.(.+)", lambda m: f"stem.norm.{m[1]}"),
    (r"mlp_head\.([01])\.(.+)", lambda m: f"head.{'norm' if m[1] == '0' else 'fc'}.{m[2]}"),
    (r"merge(\d)\.(.+)", lambda m: f"stages.{m[1]}.downsample.{m[2]}"),
)


def _rename(key: str, value: torch.Tensor, net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    if key == "pos_embedding":
        return [(_downsample_with(net, "position_embedding") or key, value.permute(0, 3, 1, 2))]
    if key == "cls_token":
        return [(_downsample_with(net, "class_token") or key, value.reshape(1, -1, 1, 1))]
    if (name := rename_by_table(key, _NETWORK_NAMES)) is not None:
        return [(name, value)]
    match = re.fullmatch(r"transformer(\d)\.layers\.(\d+)\.([01])\.(.+)", key)
    if not match or int(match[1]) - 1 >= len(net.stages) or int(match[2]) >= len(net.stages[int(match[1]) - 1].blocks):
        return [(key, value)]
    stage, block, half, rest = int(match[1]) - 1, int(match[2]), int(match[3]), match[4]
    prefix = f"stages.{stage}.blocks.{block}"
    if match := re.fullmatch(r"norm\.(.+)", rest):  # layers.i.0 is the mixer's pre-norm, layers.i.1 the FFN's
        return [(f"{prefix}.norm{half + 1}.{match[1]}", value)]
    if match := re.fullmatch(r"fn\.net\.([03])\.(.+)", rest):
        return [(f"{prefix}.ffn.{'fc1' if match[1] == '0' else 'fc2'}.{match[2]}", value)]
    if match := re.fullmatch(r"fn\.fc\.(.+)", rest):
        return [(f"{prefix}.mixer.fusion.fc.{match[1]}", value)]
    inner = rest[len("fn."):] if rest.startswith("fn.") else None
    for pattern, kind, template in _MIXER_KEYS:
        if inner is not None and (match := re.fullmatch(pattern, inner)):
            index = index_of(net.stages[stage].blocks[block].mixer.candidates, kind)
            name = f"{prefix}.mixer.candidates.{index}.{match.expand(template)}"
            if name.endswith("QKV"):
                channels = value.shape[0] // 3
                base = name[: -len("QKV")]
                return [(f"{base}query.weight", value[:channels]), (f"{base}key_value.weight", value[channels:])]
            return [(name, value)]
    return [(key, value)]
