"""Feed-forward networks: the second half of every block."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import PositiveInt
from torch import nn

from archdsl.blocks.layers import (
    GELU,
    DepthwiseConv2d,
    DepthwiseResidualConv2d,
    LayerChains,
    OddKernel,
    conv_flops,
    strided_size,
)
from archdsl.ops import Op, Site, register


class FFNOp(Op):
    role: ClassVar[str] = "ffn"


# where the depthwise conv sits between the two 1x1 layers (ConvFFNModule)
DepthwiseOrder = Literal["activation_first", "depthwise_first", "depthwise_residual"]


class ConvFFNModule(LayerChains, nn.Module):
    """1x1 conv to h, a depthwise kxk conv (optionally strided) and GELU, 1x1 conv; no norm inside.
    `order`: "activation_first" GELU then the depthwise conv (CloFormer); "depthwise_first" the
    depthwise conv then GELU (PVTv2); "depthwise_residual" GELU(h + depthwise(h)) (SG-Former).
    `hidden_relu`: a ReLU on h first (PVTv2-li)."""

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        order: DepthwiseOrder = "activation_first",
        hidden_relu: bool = False,
    ):
        super().__init__()
        if order == "depthwise_residual" and stride != 1:
            raise ValueError(f"h + depthwise(h) keeps the map size, so the depthwise conv takes stride 1, not {stride}")
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.hidden_relu = nn.ReLU() if hidden_relu else nn.Identity()
        self.act = GELU(inplace=True)  # on h, or on the depthwise conv's output: temporaries
        self.dwconv = (
            DepthwiseResidualConv2d(hidden, kernel) if order == "depthwise_residual" else DepthwiseConv2d(hidden, kernel, stride)
        )
        self.fc2 = nn.Conv2d(hidden, out_channels, 1)
        self.activation_first = order == "activation_first"
        middle = ("act", "dwconv") if self.activation_first else ("dwconv", "act")
        self.layer_chains = (("fc1", "hidden_relu", *middle, "fc2"),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_relu(self.fc1(x))
        if self.activation_first:
            return self.fc2(self.dwconv(self.act(hidden)))
        return self.fc2(self.act(self.dwconv(hidden)))


def conv_ffn_flops(site: Site, ratio: int, kernel: int, stride: int = 1) -> int:
    c_in = site.in_shape.channels
    height, width = site.in_shape.map_size
    hidden = c_in * ratio
    out_hw = (strided_size(height, kernel, stride, kernel // 2), strided_size(width, kernel, stride, kernel // 2))
    return (
        conv_flops(c_in, hidden, 1, (height, width))
        + conv_flops(hidden, hidden, kernel, out_hw, groups=hidden)
        + conv_flops(hidden, site.out_channels, 1, out_hw)
    )


@register
class ConvFFN(FFNOp):
    """CloFormer's ConvFFN: the MLP with a depthwise conv between its two layers, after the GELU."""

    op: Literal["conv_ffn"] = "conv_ffn"
    ratio: PositiveInt = 4
    """hidden channels = ratio x block width"""
    kernel: OddKernel = 5
    """depthwise kernel (odd)"""

    def depthwise_order(self) -> DepthwiseOrder:
        return "activation_first"

    def hidden_relu(self) -> bool:
        return False

    def flops(self, site: Site) -> int:
        return conv_ffn_flops(site, self.ratio, self.kernel)  # the residual add, if any, is free

    def build(self, site: Site) -> nn.Module:
        return ConvFFNModule(
            site.in_shape.channels,
            site.in_shape.channels * self.ratio,
            site.out_channels,
            self.kernel,
            order=self.depthwise_order(),
            hidden_relu=self.hidden_relu(),
        )


@register
class DWConvMLP(ConvFFN):
    """The MLP with a depthwise conv before its GELU: fc1, depthwise kxk conv, GELU, fc2. SG-Former's
    (`depthwise_residual: true`, the default): the conv as a residual, fc1, h + dwconv(h), GELU,
    fc2; PVTv2's (`depthwise_residual: false`): fc1, dwconv(h), GELU, fc2; PVTv2-li's adds
    `relu_before_depthwise: true`, a ReLU on fc1's output."""

    op: Literal["dwconv_mlp"] = "dwconv_mlp"
    kernel: OddKernel = 3
    """kernel of the depthwise conv (odd)"""
    depthwise_residual: bool = True
    """the depthwise conv's output added to its input (SG-Former); false: its output alone (PVTv2)"""

    relu_before_depthwise: bool = False
    """a ReLU on fc1's output, before the depthwise conv (PVTv2-li)"""

    def depthwise_order(self) -> DepthwiseOrder:
        return "depthwise_residual" if self.depthwise_residual else "depthwise_first"

    def hidden_relu(self) -> bool:
        return self.relu_before_depthwise


class MLPModule(LayerChains, nn.Module):
    """Linear, GELU, Linear per pixel (channel-last inside, NCHW at its boundary)."""

    layer_chains = (("fc1", "act", "fc2"),)

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.act = GELU(inplace=True)
        self.fc2 = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


@register
class MLP(FFNOp):
    """The transformer MLP: Linear to `ratio` × width, GELU (exact), Linear back."""

    op: Literal["mlp"] = "mlp"
    capabilities = frozenset({"runs_on_tokens"})
    ratio: PositiveInt = 4
    """hidden channels = ratio x block width"""

    def flops(self, site: Site) -> int:
        c_in = site.in_shape.channels
        hidden = c_in * self.ratio
        return (c_in + site.out_channels) * hidden * site.in_shape.tokens

    def build(self, site: Site) -> nn.Module:
        return MLPModule(site.in_shape.channels, site.in_shape.channels * self.ratio, site.out_channels)
