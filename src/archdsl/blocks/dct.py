"""The block DCT: a shared primitive for any op that works in the frequency domain.

`BlockDCT` cuts every channel into non-overlapping block×block tiles and keeps, per tile, the
keep×keep low-frequency corner of its orthonormal 2-D DCT-II; `BlockIDCT` maps such corners
back to tiles with the transposed basis (the DCT-III, dropped frequencies taken as zero). Both
are one convolution over the whole map (a depthwise strided conv; a grouped 1x1 conv and a
pixel shuffle), never a loop over tiles. Each one's input gradient is the other one, its adjoint
(`_AdjointGradient`).

The basis is computed from the block size, not stored. It is held per channel as a *frozen
parameter* (requires_grad False), as the released NomMer code holds it: its checkpoints carry
the bases in their state dicts, and the parameter totals (official.yaml `params`) count them,
while the trainable counts do not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def dct_basis(block: int, keep: int) -> torch.Tensor:
    """(keep², block, block) float32: row v·keep + u is the basis image of frequency (v, u)
    (v vertical, u horizontal), (2/N)·c(v)·c(u)·cos((2y+1)vπ/2N)·cos((2x+1)uπ/2N) with
    c(0) = 1/√2, c(k > 0) = 1. Computed in float64, like the released code, then rounded."""
    scale = torch.ones(block, dtype=torch.float64, device="cpu")
    scale[0] = 1 / math.sqrt(2)
    positions = torch.arange(block, dtype=torch.float64, device="cpu")
    frequencies = torch.arange(keep, dtype=torch.float64, device="cpu")
    # cosines[k, y] = cos((2y + 1) k π / 2N)
    cosines = torch.cos((2 * positions[None, :] + 1) * frequencies[:, None] * math.pi / (2 * block))
    weights = 2 * scale[:keep, None] * scale[None, :keep] / block  # [v, u]
    basis = weights[:, :, None, None] * cosines[:, None, :, None] * cosines[None, :, None, :]
    return basis.reshape(keep * keep, block, block).float()


def block_dct_flops(channels: int, keep: int, height: int, width: int) -> int:
    """Multiply-adds of `BlockDCT` (or `BlockIDCT`) on a channels×height×width map: keep² per
    pixel and channel, as fvcore counts the conv that computes it."""
    return channels * keep * keep * height * width


class _AdjointGradient(torch.autograd.Function):
    """A transform with a frozen basis whose input gradient is its adjoint applied to the output
    gradient: the block DCT's adjoint is the truncated inverse DCT, and the other way round. On
    the CPU torch's backward of the DCT's strided depthwise conv (a channel multiplier of keep²)
    is slow: on an (8, 96, 56, 56) map, block 8, forward and backward took 81 ms, the forward
    3.1 and the adjoint 5.7 (the inverse DCT: 25.5 ms against 7.9 and 2.8)."""

    @staticmethod
    def forward(ctx, x, transform, adjoint):
        ctx.adjoint = adjoint
        return transform(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return ctx.adjoint(grad), None, None


def _with_adjoint_gradient(x: torch.Tensor, basis: nn.Parameter, transform, adjoint) -> torch.Tensor:
    if (
        basis.requires_grad  # a trained basis needs its own gradient
        or not (torch.is_grad_enabled() and x.requires_grad)
        or torch.is_autocast_enabled(x.device.type)  # the backward would meet bf16 gradients outside autocast
        or torch.jit.is_tracing()  # fvcore and export read the conv
    ):
        return transform(x)
    return _AdjointGradient.apply(x, transform, adjoint)


class BlockDCT(nn.Module):
    """(B, C, H, W) -> (B, C·keep², H/block, W/block); output channel c·keep² + v·keep + u."""

    def __init__(self, channels: int, block: int, keep: int):
        super().__init__()
        self.channels, self.block, self.keep = channels, block, keep
        basis = dct_basis(block, keep).unsqueeze(1).repeat(channels, 1, 1, 1)  # (C·keep², 1, N, N)
        self.weight = nn.Parameter(basis.to(torch.get_default_device()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _with_adjoint_gradient(x, self.weight, self._dct, self._adjoint)

    def _dct(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=self.block, groups=self.channels)

    def _adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        # BlockIDCT's weight, [c·N² + y·N + x, v·keep + u], from this one's [c·keep² + v·keep + u, y, x]
        weight = self.weight.view(self.channels, self.keep**2, self.block**2).transpose(1, 2)
        inverse = F.conv2d(grad, weight.reshape(-1, self.keep**2, 1, 1), groups=self.channels)
        return F.pixel_shuffle(inverse, self.block)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, block={self.block}, keep={self.keep}"


class BlockIDCT(nn.Module):
    """(B, C·keep², h, w) -> (B, C, h·block, w·block): each pixel's keep² coefficients become a
    block×block tile (a grouped 1x1 conv to channel c·N² + y·N + x, then a pixel shuffle)."""

    def __init__(self, channels: int, block: int, keep: int):
        super().__init__()
        self.channels, self.block, self.keep = channels, block, keep
        basis = dct_basis(block, keep).reshape(keep * keep, block * block).t()  # [y·N + x, v·keep + u]
        basis = basis.reshape(block * block, keep * keep, 1, 1).repeat(channels, 1, 1, 1)
        self.weight = nn.Parameter(basis.to(torch.get_default_device()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _with_adjoint_gradient(x, self.weight, self._idct, self._adjoint)

    def _idct(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, groups=self.channels), self.block)

    def _adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        # BlockDCT's weight from this one's (see BlockDCT._adjoint)
        weight = self.weight.view(self.channels, self.block**2, self.keep**2).transpose(1, 2)
        return F.conv2d(grad, weight.reshape(-1, 1, self.block, self.block), stride=self.block, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, block={self.block}, keep={self.keep}"
