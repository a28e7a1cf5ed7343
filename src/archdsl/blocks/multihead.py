"""Softmax attention, written once: every attention op of every family is composed of these.

* `attend`: softmax(scale · q kᵀ + bias) v, optionally with the attention each key receives;
* `split_heads` / `merge_heads`: channel-last tokens <-> per-head tokens (head-major channels);
* `window_partition` / `window_merge`: a channel-last map <-> its rectangular windows;
* `shifted_window_mask`: Swin's mask for windows over a cyclically shifted map;
* `SpatialReductionAttention`: every pixel's query against keys and values projected from a
  reduced map (pooled, merged by a strided conv, or the map itself).
"""

from __future__ import annotations

from math import prod

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.cost import counting_flops
from archdsl.network import CandidateModule

# the explicit path's score matrices are cut into query chunks of about this many elements: a
# whole (queries, keys) matrix of SG-Former-S at 800x1333 is 280 MB, and its softmax and the
# product after it ran 3x slower from memory than chunk by chunk from cache. Chunks are never
# under 128 queries: many windows of a few queries each are better left whole
EXPLICIT_CHUNK_ELEMENTS = 2**19
EXPLICIT_CHUNK_MIN_QUERIES = 128


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    return_attention_received: bool = False,
):
    """softmax(scale · q kᵀ + bias) v over (..., tokens, dim) tensors; with
    `return_attention_received`, (that, the attention each key receives: the softmax
    probabilities averaged over heads (dim -3) and queries, (..., keys), outside autograd).

    Runs fused `scaled_dot_product_attention` in eager mode, under torch.compile, and traced or
    exported (torch.jit.trace, ONNX, torch.export), so that a traced model computes eager's
    numbers: SG-Former sorts tokens by a significance map computed from earlier blocks, and an
    ulp of difference upstream reorders near-tied tokens (a traced SG-Former-S drifted 2.7e-2
    from eager when tracing took the explicit path). When the attention received is wanted, and
    while fvcore counts FLOPs (`cost.counting_flops()`: it skips the fused op), it computes the
    explicit matmul → softmax → matmul. So it does where the bias takes a gradient (a trained
    relative-position table): SDPA's fused CPU kernel has no mask gradient and falls back to an
    unfused path, slower than the explicit one (MixFormer-B0's training step at batch 8: 0.92x
    the time with the explicit path, NomMer-T's 1.00x; bench/trained_bias_attention.py). The two
    paths agree to ~1e-6 (tests/test_compiler.py)."""
    if bias is not None:
        bias = bias.to(query.dtype)  # a float32 bias table under autocast: SDPA wants the query's dtype
    trained_bias = bias is not None and bias.requires_grad
    if return_attention_received or counting_flops() or trained_bias:
        return _attend_explicit(query, key, value, scale, bias, return_attention_received)
    return _attend_fused(query, key, value, scale, bias)


def _attend_fused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """`attend`'s fused path: `scaled_dot_product_attention` on inputs laid out as its CPU kernels
    run fastest."""
    # the CPU kernels copy strided inputs internally, slower than one explicit copy (~1.4x on
    # CloFormer's global branch, whose queries arrive transposed)
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    if bias is not None:
        # a mask with fewer dims than the query sends the CPU kernel down a slower path (2.3x on
        # a (heads, N, N) window bias); the same mask with leading 1s does not
        bias = bias.reshape((1,) * (query.dim() - bias.dim()) + bias.shape)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)


def _attend_explicit(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None,
    return_attention_received: bool,
):
    """`attend`'s explicit path: its output (and the attention received), query chunk by
    query chunk when the score matrix exceeds `EXPLICIT_CHUNK_ELEMENTS`. Every row's softmax and
    product are the unchunked ones (the outputs are equal); chunked, only the sum over queries
    behind the attention received changes order (~1e-7)."""
    *leading, queries, _ = query.shape
    rows = max(EXPLICIT_CHUNK_MIN_QUERIES, EXPLICIT_CHUNK_ELEMENTS // (prod(leading) * key.shape[-2]))
    chunked = rows < queries
    outputs, received = [], None
    for start in range(0, queries, rows):
        # scaled after the product, as the released SG-Former code computes its significance
        scores = (query[..., start : start + rows, :] @ key.transpose(-2, -1)) * scale
        if bias is not None:
            scores = scores + (bias if bias.shape[-2] == 1 else bias[..., start : start + rows, :])
        probabilities = scores.softmax(dim=-1)
        outputs.append(probabilities @ value)
        if return_attention_received:
            probabilities = probabilities.detach()
            # whole, the released code's order: the mean over heads, then over queries
            part = probabilities.sum(dim=(-3, -2)) if chunked else probabilities.mean(-3).mean(-2)
            received = part if received is None else received + part
    out = torch.cat(outputs, dim=-2) if chunked else outputs[0]
    if not return_attention_received:
        return out
    return out, (received / (query.shape[-3] * queries) if chunked else received)


def sdpa_flops(inputs, outputs) -> int:
    """fvcore handle for `aten::scaled_dot_product_attention`: its two matmuls."""
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(inputs[i]) for i in range(3))
    return prod(query[:-1]) * key[-2] * (query[-1] + value[-1])


def split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., N, heads·d) -> (..., heads, N, d): channel h·d + e is head h's e (a view)."""
    return tokens.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `split_heads`: (..., heads, N, d) -> (..., N, heads·d)."""
    return x.transpose(-3, -2).flatten(-2)


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, wh·ww, C): `window` = (wh, ww) windows image by image, row-major;
    tokens row-major inside each."""
    _, height, width, channels = x.shape
    wh, ww = window
    # -1, not the batch read from x: the ONNX exporter folded that into a constant (on SG-Former's
    # windows), and the exported graph then ran at one batch size only
    x = x.reshape(-1, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


def window_merge(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """The exact inverse of `window_partition`: (B·nW, wh·ww, C) -> (B, H, W, C)."""
    wh, ww = window
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // wh, width // ww, wh, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


# Swin's masked logit: -100, not -inf, so that the softmax equals the released code's (and timm's)
SHIFTED_WINDOW_MASK_VALUE = -100.0


def shifted_window_mask(height: int, width: int, window: int, shift: tuple[int, int]) -> torch.Tensor:
    """(windows, window², window²) float: 0 between tokens of one region, -100 between tokens of
    different regions, for a height×width map rolled up and left by `shift` = (rows, columns) and
    cut into `window`×`window` windows in `window_partition`'s order (Swin's SW-MSA mask).

    The roll brings the map's first rows and columns round to its end, beside pixels that are not
    their neighbours: along each side the last `window` positions fall into two regions (the
    last `shift`, the rest of the window), everything before into a third, and a token attends only
    inside its own region. A side that is not shifted is one region."""

    def regions(side: int, by: int) -> torch.Tensor:
        region = torch.zeros(side, dtype=torch.long)
        if by:
            region[side - window : side - by] = 1
            region[side - by :] = 2
        return region

    region = regions(height, shift[0])[:, None] * 3 + regions(width, shift[1])[None, :]
    windows = window_partition(region[None, :, :, None], (window, window)).squeeze(-1)
    different = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(different.shape).masked_fill(different, SHIFTED_WINDOW_MASK_VALUE)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H·W, C), row-major (a view)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H·W, C) -> a contiguous (B, C, H, W) (convolutions after it give other last bits on a
    channel-last layout)."""
    return tokens.transpose(1, 2).contiguous().unflatten(-1, (height, width))


class PixelLinear(nn.Linear):
    """A Linear applied at every pixel of an NCHW map (over its row-major tokens, as the released
    codes' token Linears run; the result is a channel-last view of the map)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(map_to_tokens(x)).transpose(1, 2).unflatten(-1, x.shape[-2:])


class SpatialReductionAttention(CandidateModule):
    """Multi-head attention of every pixel's query over keys and values projected from a
    reduced map (PVT's spatial reduction): q = query(x), [k | v] = key_value(reduce(x)),
    softmax attention per head, then `projection` if given. NCHW in and out; the projections
    are per-pixel maps (1x1 convs or `PixelLinear`s), `reduce` any map -> map module (average
    pooling, a strided conv with its norm, `nn.Identity` for global attention).

    Its values can be gated per channel (`value_gate`, channels ordered head by head), and it
    can return the attention each key receives (B, keys; `attend`'s) beside its output."""

    def __init__(
        self,
        query: nn.Module,
        reduce: nn.Module,
        key_value: nn.Module,
        heads: int,
        head_dim: int,
        projection: nn.Module | None = None,
    ):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.scale = head_dim**-0.5
        self.query = query
        self.reduce = reduce
        self.key_value = key_value
        self.projection = projection

    def forward(
        self,
        x: torch.Tensor,
        value_gate: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        return_attention_received: bool = False,
    ):
        batch, _, height, width = x.shape
        query = split_heads(map_to_tokens(self.query(x)), self.heads)
        key, value = (split_heads(part, self.heads) for part in map_to_tokens(self.key_value(self.reduce(x))).chunk(2, dim=-1))
        if value_gate is not None:
            value = value * value_gate.reshape(batch, self.heads, 1, self.head_dim)
        attended = attend(query, key, value, self.scale, return_attention_received=return_attention_received)
        out, received = attended if return_attention_received else (attended, None)
        out = tokens_to_map(merge_heads(out), height, width)
        if self.projection is not None:
            out = self.projection(out)
        return (out, received) if return_attention_received else out
