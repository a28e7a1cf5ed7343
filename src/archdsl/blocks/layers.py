"""Shared primitives: small modules every family uses, each beside its FLOP formula.

FLOP formulas follow fvcore's rules exactly (one multiply-add = one FLOP, biases free), so the
analytic count from the graph and fvcore's count on the built module agree.
"""

from __future__ import annotations

from fractions import Fraction
from math import gcd, isqrt
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, PositiveInt
from torch import nn

from archdsl.ops import FeatureShape, OpCheckError, Site


def _odd(kernel: int) -> int:
    if kernel % 2 == 0:
        raise ValueError(
            f"kernel {kernel} is even; a conv keeps the map size with padding k//2 only for odd kernels, "
            f"so use {kernel - 1} or {kernel + 1}"
        )
    return kernel


# the kernel of a "same"-padded conv (padding k//2): validated where it is written in the YAML
OddKernel = Annotated[PositiveInt, AfterValidator(_odd)]


def conv_flops(
    in_channels: int, out_channels: int, kernel: int | tuple[int, int], out_hw: tuple[int, int], groups: int = 1
) -> int:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return out_channels * out_hw[0] * out_hw[1] * (in_channels // groups) * kh * kw


def linear_flops(in_features: int, out_features: int, tokens: int = 1) -> int:
    return in_features * out_features * tokens


def attention_flops(heads: int, queries: int, keys: int, head_dim: int, value_dim: int | None = None) -> int:
    """q @ kᵀ and attn @ v: the two matmuls of softmax attention."""
    return heads * queries * keys * (head_dim + (value_dim if value_dim is not None else head_dim))


def strided_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def two_stride_2_convs(map_size: tuple[int, int]) -> tuple[int, int]:
    """The map after two 3x3 convs with stride 2 and padding 1 (CloFormer's and SG-Former's stems)."""
    height, width = (strided_size(strided_size(side, 3, 2, 1), 3, 2, 1) for side in map_size)
    return height, width


# How an op's window, pool or block size meets a map it may not divide (see `fit_to_map`).
FitRule = Literal["exact", "nearest_divisor", "pad", "divisor_or_pad"]
# How an op's stride meets such a map: a stride cannot change, so it is kept or the map padded.
StrideFit = Literal["exact", "pad"]


def fit_to_map(size: int, height: int, width: int, rule: FitRule) -> int:
    """The window, pool or block size an op uses on a height×width map.

    `exact`: `size` as written (the op's check then demands that it divide the map).
    `nearest_divisor`: the common divisor of the two sides nearest to `size` (`nearest_divisor`),
    which is `size` itself wherever it divides both. So a spec written for 224 keeps its sizes
    wherever they fit (448: windows stay 7) and still runs where they do not (384: 96x96 and
    48x48 maps get window 8, nearer to 7 than 6 is on a log scale).
    `pad`: `size` as written, on the map zero-padded to its multiple (`pads_map`).
    `divisor_or_pad`: the nearest common divisor where it is less than a factor 2 from `size`
    (`nearest_divisor`'s choice wherever that keeps the op what it was: 8 or 4 for a window of
    7); else `size` on the padded map. A map with no such divisor (200x333 has only 1) would
    otherwise turn a window into one pixel, or a DCT block into no compression at all.
    """
    if rule in ("exact", "pad"):
        return size
    divisor = nearest_divisor(gcd(height, width), size)
    if rule == "divisor_or_pad" and max(divisor / size, size / divisor) >= 2:
        return size
    return divisor


def pads_map(rule: FitRule | StrideFit) -> bool:
    """Whether an op under this rule zero-pads a map its size does not divide (bottom and right,
    `network.pad_to_multiple`; its output cropped back) instead of refusing it."""
    return rule in ("pad", "divisor_or_pad")


def refuses_map(shape: FeatureShape, size: int, rule: FitRule | StrideFit) -> bool:
    """Whether an op whose window, pool, block or stride is `size` cannot run on this map under
    this rule: the rule does not pad, and `size` does not divide both sides."""
    height, width = shape.map_size
    return not pads_map(rule) and bool(height % size or width % size)


def fitted_map(shape: FeatureShape, size: int, rule: FitRule | StrideFit) -> FeatureShape:
    """The map an op computes on with this `size` (from `fit_to_map`, or its stride) and rule:
    the map padded to multiples of `size` where the rule pads, else the map itself. Its FLOP rule
    counts what runs on this map; the output is cropped back to `shape`."""
    return shape.padded(size) if pads_map(rule) else shape


def merged_map(shape: FeatureShape, stride: int, rule: StrideFit, channels: int) -> FeatureShape:
    """The map a non-overlapping `stride`×`stride` merge (a strided conv, a patch merging) gives,
    `channels` wide: the map, padded where the rule pads, divided by the stride."""
    height, width = fitted_map(shape, stride, rule).map_size
    return FeatureShape(channels, height // stride, width // stride)


def check_merge_fits(site: Site, stride: int, rule: StrideFit, field: str, what: str) -> None:
    """Refuse a non-overlapping `stride`×`stride` merge (`what`: the merged neighbourhood, a
    strided conv) of a map it does not divide, unless `rule` pads: the error the downsamples share."""
    if refuses_map(site.in_shape, stride, rule):
        height, width = site.in_shape.map_size
        raise OpCheckError(
            f"the {height}x{width} map entering stage {site.stage} is not a multiple of {what} {stride}x{stride}; "
            f"use an input size that keeps every stage map divisible (with a stride-4 stem and three such "
            f"downsamples, sides that are multiples of 32), or `fit: pad` to zero-pad it to a multiple",
            field=field,
        )


def nearest_divisor(number: int, near: float) -> int:
    """The divisor of `number` nearest to `near` on a log scale (a size twice too large is as far
    off as one half as large), the larger on a tie; a `near` below 1 counts as 1. The one rule by
    which windows, pools, DCT blocks, SG-Former's aggregation rates and a search space's derived
    head counts meet a number they may not divide."""
    target = Fraction(max(near, 1))
    return min(divisors(number), key=lambda d: (max(d / target, target / d), -d))


def common_divisors(height: int, width: int) -> list[int]:
    """The sizes that divide both sides of a map: the windows, pools or blocks that tile it."""
    return divisors(gcd(height, width))


def divisors(number: int) -> list[int]:
    """The divisors of `number` in increasing order, by trial division up to its square root (the
    sizes a spec may hold are capped in schema.py, so this stays a few thousand steps)."""
    small = [d for d in range(1, isqrt(number) + 1) if number % d == 0]
    return small + [number // d for d in reversed(small) if d * d != number]


class LayerChains:
    """Mixed into a module whose forward applies some of its attributes one after another, with
    nothing between: `layer_chains` names each such run, in order. `prepare_for_inference` reads
    a chain as it reads an nn.Sequential's children: a BatchNorm right after a conv folds into
    it, and an activation right after a conv or Linear (folded norms aside) runs in its kernel."""

    layer_chains: ClassVar[tuple[tuple[str, ...], ...]] = ()


class Swish(nn.Module):
    """x · sigmoid(x), written out: nn.SiLU differs in the last ulp from the released code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class GELU(nn.GELU):
    """nn.GELU (exact, erf) whose channels-last maps take the kernel a contiguous tensor takes.
    torch's CPU GELU runs a channels-last tensor through a slower path that also rounds
    differently: forward 1.6x and backward 1.8x the time on an (8, 128, 56, 56) map, and up to
    5e-7 away from the NCHW result. The NHWC view of the same memory is contiguous, so GELU on it
    gives the NCHW numbers bit for bit at the NCHW speed, and the result stays channels-last.

    `inplace`: where no gradient is recorded (autograd needs GELU's input), overwrite the input
    instead of allocating the output, for a caller whose input is its own temporary. A fresh
    25 MB map costs more in page faults than GELU costs to compute (SG-Former-S's first-stage
    GELUs at batch 8: 19 ms per call in the model, 5.5 ms on reused memory)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return self._gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self._gelu(x)

    def _gelu(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and not torch.is_grad_enabled():
            return torch.ops.aten.gelu_(x)
        return super().forward(x)


class DepthwiseConv2d(nn.Conv2d):
    """A conv with `multiplier` filters per input channel (groups = in_channels), "same"-padded
    for odd kernels; nn.Conv2d's parameters and state_dict names.

    Its weight gradient on the CPU, for kernels above 3x3 on NCHW maps, is itself a depthwise
    convolution (`_DepthwiseConvolution`): oneDNN has a direct depthwise weight-gradient kernel
    for 3x3 only and runs larger ones as one small GEMM per channel, 2-10x slower (an (8, 192,
    14, 14) map, 7x7: 12.8 ms against 1.1 ms)."""

    def __init__(self, in_channels: int, kernel: int, stride: int = 1, multiplier: int = 1, padding: int | None = None):
        padding = kernel // 2 if padding is None else padding
        super().__init__(in_channels, in_channels * multiplier, kernel, stride, padding, groups=in_channels)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and max(self.kernel_size) > 3
            and torch.is_grad_enabled()
            and weight.requires_grad
            and x.is_contiguous()
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)  # oneDNN's bf16 kernels are another matter
            and not torch.jit.is_tracing()  # fvcore and export read the plain conv
        ):
            return _DepthwiseConvolution.apply(x, weight, bias, self.stride, self.padding)
        return super()._conv_forward(x, weight, bias)


class DepthwiseResidualConv2d(DepthwiseConv2d):
    """x + depthwise(x) as one depthwise conv whose kernel carries the identity on its centre tap
    (weight + δ): one conv where there were a conv and an add, and in training no second gradient
    path into x for autograd to sum into a fresh map. In SG-Former-S's FFN (fc1, h + dwconv(h),
    GELU, fc2) at batch 8 the training step of the (8, 64, 56, 56) FFN took 0.89x the time of the
    conv-then-add (bench/depthwise_residual.py). The parameters and state_dict are
    DepthwiseConv2d's; the sum rounds once where the add rounded it twice."""

    def __init__(self, channels: int, kernel: int):
        super().__init__(channels, kernel)
        identity = torch.zeros_like(self.weight)
        identity[:, :, kernel // 2, kernel // 2] = 1
        self.register_buffer("identity", identity, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight + self.identity, self.bias)


class _DepthwiseConvolution(torch.autograd.Function):
    """F.conv2d with groups = in_channels, whose weight gradient is a depthwise conv of the padded
    input, all N·C maps as channels, with the output gradient as each channel's kernel (dilated by
    the stride), summed over the batch. The input gradient is aten's alone: asked for the bias
    gradient too, oneDNN computes the weight gradient with it."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, bias, stride, padding, groups=x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        batch, channels = x.shape[:2]
        out_channels, _, kernel_height, kernel_width = weight.shape
        (pad_h, pad_w), (stride_h, stride_w) = ctx.padding, ctx.stride
        grad = grad.contiguous()
        needs_input, _, needs_bias = ctx.needs_input_grad[:3]
        grad_input = (
            torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), channels, (True, False, False)
            )[0]
            if needs_input
            else None
        )
        padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
        per_image = F.conv2d(
            padded.reshape(1, batch * channels, *padded.shape[2:]),
            grad.reshape(batch * out_channels, 1, *grad.shape[2:]),
            dilation=(stride_h, stride_w),
            groups=batch * channels,
        )
        grad_weight = per_image[..., :kernel_height, :kernel_width].reshape(batch, *weight.shape).sum(0)
        grad_bias = grad.sum((0, 2, 3)) if needs_bias else None
        return grad_input, grad_weight, grad_bias, None, None
