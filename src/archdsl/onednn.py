"""oneDNN primitives for a prepared model's convolutions and Linears on the CPU.

Two gains, both measured by bench/onednn_layers.py:

* The ReLU or GELU that follows a conv or Linear runs as the primitive's post-op, on the output
  while it is still in cache, instead of as a second pass over a fresh map.
* torch's Linear (and its 1x1 convolutions on channels-last maps) call MKL's sgemm. MKL takes
  its AVX2 code on AMD processors, while oneDNN takes AVX-512 wherever the processor has it; on
  an AVX-512 AMD EPYC the same product takes about half the time. On Intel processors both
  libraries use AVX-512, so there the gain is the fused activations and the reordered kernels.

Each kernel is reordered once into oneDNN's blocked layout (as inductor's freezing does), not
on every call. The primitives have no autograd and take float32 CPU tensors, so a
lowered layer runs as the plain layer wherever they do not apply (`_runs_on_onednn`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.blocks.layers import GELU, DepthwiseConv2d, DepthwiseResidualConv2d

# (attr, scalars, algorithm): how oneDNN's pointwise ops name a post-op
PostOp = tuple[str, list, str | None]

# the kernel each conv type computes with, by exact type: a subclass with a forward of its own
# is left as it is
CONV_KERNELS: dict[type[nn.Conv2d], Callable[[nn.Conv2d], torch.Tensor]] = {
    nn.Conv2d: lambda conv: conv.weight,
    DepthwiseConv2d: lambda conv: conv.weight,
    DepthwiseResidualConv2d: lambda conv: conv.weight + conv.identity,
}


def post_op(activation: nn.Module) -> PostOp | None:
    """The post-op that computes `activation` (nn.Identity: none), or None where oneDNN has none."""
    if type(activation) is nn.Identity:
        return "none", [], None
    if type(activation) in (nn.GELU, GELU):
        return "gelu", [], activation.approximate
    if type(activation) is nn.ReLU:
        return "relu", [], None
    return None


def _runs_on_onednn(x: torch.Tensor) -> bool:
    """Where a lowered layer calls oneDNN: float32 on the CPU, no gradient recorded, no autocast,
    and not inside a trace (torch.compile, fvcore, export read the plain layer)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


class _ReorderedOnce:
    """A layer whose kernel oneDNN reorders into its blocked layout at the first call. A oneDNN
    tensor has no storage to copy or pickle, so a copy of the layer reorders its own."""

    _blocked: torch.Tensor | None = None

    def _reorder(self) -> torch.Tensor:
        raise NotImplementedError

    def blocked_kernel(self) -> torch.Tensor:
        if self._blocked is None:
            self._blocked = self._reorder()
        return self._blocked

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_blocked": None}


class OneDnnConv2d(_ReorderedOnce, nn.Conv2d):
    """A conv and the activation after it as one oneDNN convolution. Its parameters are the conv's
    (the state_dict keeps their names); `kernel` is what the conv computes with, frozen."""

    def __init__(self, conv: nn.Conv2d, activation: nn.Module):
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            device="meta",
        )
        self.weight, self.bias = conv.weight, conv.bias
        self.register_buffer("kernel", CONV_KERNELS[type(conv)](conv).detach(), persistent=False)
        self.activation = activation
        self.post_op = post_op(activation)

    def _reorder(self) -> torch.Tensor:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.kernel.contiguous().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _runs_on_onednn(x):
            return self.activation(self._conv_forward(x, self.kernel, self.bias))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.blocked_kernel(), self.bias, self.padding, self.stride, self.dilation, self.groups, *self.post_op
        )


class OneDnnLinear(_ReorderedOnce, nn.Linear):
    """A Linear and the activation after it as one oneDNN inner product, on the Linear's parameters."""

    def __init__(self, linear: nn.Linear, activation: nn.Module):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.activation = activation
        self.post_op = post_op(activation)

    def _reorder(self) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _runs_on_onednn(x):
            return self.activation(F.linear(x, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x, self.blocked_kernel(), self.bias, *self.post_op)


def _lowered(layer: nn.Module, activation: nn.Module) -> nn.Module | None:
    """`layer` and `activation` as one oneDNN layer, or None where `layer` has none."""
    if type(layer) in CONV_KERNELS and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        return OneDnnConv2d(layer, activation)
    if type(layer) is nn.Linear:
        return OneDnnLinear(layer, activation)
    return None


def onednn_can_run(model: nn.Module) -> bool:
    """Whether this torch has oneDNN and the model's parameters are float32 on the CPU."""
    return torch.backends.mkldnn.is_available() and all(
        parameter.device.type == "cpu" and parameter.dtype == torch.float32 for parameter in model.parameters()
    )


def lower_to_onednn(model: nn.Module, chains: Iterable[tuple[nn.Module, tuple[str, ...]]]) -> nn.Module:
    """Every conv and Linear of `model` lowered, in place, to its oneDNN layer; in each chain
    (owner, names of layers its forward applies in order), an activation that follows a layer,
    identities aside, becomes that layer's post-op and an identity."""
    for owner, chain in chains:
        for index, name in enumerate(chain):
            following = next((later for later in chain[index + 1 :] if type(owner.get_submodule(later)) is not nn.Identity), None)
            activation = owner.get_submodule(following) if following else None
            if activation is None or post_op(activation) is None:
                continue
            lowered = _lowered(owner.get_submodule(name), activation)
            if lowered is not None:
                owner.register_module(name, lowered)
                owner.register_module(following, nn.Identity())
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            lowered = _lowered(child, nn.Identity())
            if lowered is not None:
                module.register_module(name, lowered)
    return model
