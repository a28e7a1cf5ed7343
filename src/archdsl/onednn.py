"""oneDNN primitives for convolutions and Linears on the CPU.

Two gains, both measured by bench/onednn_layers.py:

* The ReLU, GELU or Swish that follows a conv or Linear runs as the primitive's post-op, on
  the output while it is still in cache, instead of as a second pass over a fresh map.
* torch's Linear, and its 1x1 convolutions at one thread, call MKL's sgemm. MKL takes its AVX2
  code on AMD processors, while oneDNN takes AVX-512 wherever the processor has it; on an
  AVX-512 AMD EPYC the same product takes about half the time. Where MKL runs its best code
  for the processor, only the fused activations and reordered kernels should remain (this
  project has not measured such a machine).

`lower_to_onednn` (through `prepare_for_inference`) lowers every conv and Linear, fusing the
activations its chains name; `use_onednn` lowers the Linears and 1x1 convs alone, for training:
their gradients go through oneDNN's primitives too (`_Linear`, `_PointwiseConvolution`).
A lowered layer keeps its parameters and state_dict names, and runs as the plain layer wherever
oneDNN does not apply (`_on_onednn`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.blocks.layers import GELU, DepthwiseConv2d, DepthwiseResidualConv2d, Swish

# (attr, scalars, algorithm): how oneDNN's pointwise ops name a post-op
PostOp = tuple[str, list, str | None]
NO_POST_OP: PostOp = ("none", [], None)

# whether this torch was built with oneDNN (torch.compile cannot trace the question, so it is asked once)
HAS_ONEDNN = torch.backends.mkldnn.is_available()

# the conv types lowered, by exact type: a subclass with a forward of its own is left as it is
LOWERED_CONVS = (nn.Conv2d, DepthwiseConv2d, DepthwiseResidualConv2d)


def post_op(activation: nn.Module) -> PostOp | None:
    """The post-op that computes `activation` (nn.Identity: none), or None where oneDNN has none."""
    if type(activation) is nn.Identity:
        return NO_POST_OP
    if type(activation) in (nn.GELU, GELU):
        return "gelu", [], activation.approximate
    if type(activation) is nn.ReLU:
        return "relu", [], None
    if type(activation) in (nn.SiLU, Swish):
        return "swish", [], None
    return None


def _on_onednn(x: torch.Tensor) -> bool:
    """Where a lowered layer calls oneDNN: a torch built with it, float32 on the CPU, no autocast,
    and not inside a trace (torch.compile, fvcore and export read the plain layer)."""
    return (
        HAS_ONEDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, *NO_POST_OP)


def _weight_gradient(grad_rows: torch.Tensor, input_rows: torch.Tensor) -> torch.Tensor:
    """gradᵀ · input of (rows, out) and (rows, in) matrices as one oneDNN inner product, inputᵀ by
    gradᵀ, transposed back: oneDNN copies transposed operands first, and in this order that costs
    least (0.50-0.75 of torch's matmul on SG-Former's and NomMer's Linear shapes)."""
    return _inner_product(input_rows.t(), grad_rows.t()).t().contiguous()


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """A map's pixels as rows of its channels: a view of a channels-last map."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class _Linear(torch.autograd.Function):
    """F.linear with its forward and both gradients as oneDNN inner products."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad
        grad_input = _inner_product(grad, weight.t().contiguous()) if needs_input else None
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_weight = _weight_gradient(grad_rows, x.reshape(-1, x.shape[-1])) if needs_weight else None
        grad_bias = grad_rows.sum(0) if ctx.has_bias and needs_bias else None
        return grad_input, grad_weight, grad_bias


def _pointwise_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, (0, 0), (1, 1), (1, 1), 1)


class _PointwiseConvolution(torch.autograd.Function):
    """A 1x1 conv (stride 1, one group) with its forward and both gradients on oneDNN's primitives
    (at one thread torch runs 1x1 convs through MKL, forward and backward): the input gradient
    is the 1x1 conv by the transposed kernel; the weight gradient, on NCHW maps, one inner product
    per image, gradient (O, HW) by input (C, HW), with no copy, on other maps `_weight_gradient`
    over their pixels."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _pointwise_convolution(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad
        grad_input = _pointwise_convolution(grad, weight.transpose(0, 1).contiguous()) if needs_input else None
        grad_weight = None
        if needs_weight and grad.is_contiguous() and x.is_contiguous():
            grads, inputs = grad.flatten(2), x.flatten(2)
            grad_weight = _inner_product(grads[0], inputs[0])
            for image in range(1, len(grads)):
                grad_weight += _inner_product(grads[image], inputs[image])
        elif needs_weight:
            grad_weight = _weight_gradient(_pixels(grad), _pixels(x))
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias and needs_bias else None
        return grad_input, None if grad_weight is None else grad_weight[..., None, None], grad_bias


class _BlockedKernel:
    """A layer whose kernel oneDNN reorders into its blocked layout for evaluation, again only
    when the weight has changed: its version counter moves with every in-place update (an
    optimizer step, load_state_dict). A oneDNN tensor has no storage to copy or pickle, so a
    copy of the layer reorders its own."""

    _blocked: torch.Tensor | None = None
    _blocked_from: tuple[int, int] | None = None

    def _reorder(self) -> torch.Tensor:
        raise NotImplementedError

    def blocked_kernel(self) -> torch.Tensor:
        source = (self.weight.data_ptr(), self.weight._version)
        if self._blocked_from != source:
            self._blocked, self._blocked_from = self._reorder(), source
        return self._blocked

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_blocked": None, "_blocked_from": None}


class OneDnnConv2d(_BlockedKernel, nn.Conv2d):
    """A conv and the activation after it as one oneDNN convolution, on the conv's parameters."""

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
        # DepthwiseResidualConv2d computes with weight + its identity on the centre tap
        residual = type(conv) is DepthwiseResidualConv2d
        self.register_buffer("identity", conv.identity if residual else None, persistent=False)
        self.activation = activation
        self.post_op = post_op(activation)
        self.pointwise = (self.kernel_size, self.stride, self.padding, self.groups) == ((1, 1), (1, 1), (0, 0), 1)

    def kernel(self) -> torch.Tensor:
        return self.weight if self.identity is None else self.weight + self.identity

    def _reorder(self) -> torch.Tensor:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.kernel().detach().contiguous().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _on_onednn(x) and not torch.is_grad_enabled():
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.blocked_kernel(), self.bias, self.padding, self.stride, self.dilation, self.groups, *self.post_op
            )
        if _on_onednn(x) and self.pointwise:
            return self.activation(_PointwiseConvolution.apply(x, self.weight, self.bias))
        return self.activation(self._conv_forward(x, self.kernel(), self.bias))


class OneDnnLinear(_BlockedKernel, nn.Linear):
    """A Linear and the activation after it as one oneDNN inner product, on the Linear's parameters."""

    def __init__(self, linear: nn.Linear, activation: nn.Module):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.activation = activation
        self.post_op = post_op(activation)

    def _reorder(self) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _on_onednn(x):
            return self.activation(F.linear(x, self.weight, self.bias))
        if torch.is_grad_enabled():
            return self.activation(_Linear.apply(x, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x, self.blocked_kernel(), self.bias, *self.post_op)


def _lowered(layer: nn.Module, activation: nn.Module, pointwise_only: bool) -> nn.Module | None:
    """`layer` and `activation` as one oneDNN layer, or None where `layer` has none."""
    if type(layer) in LOWERED_CONVS and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        lowered = OneDnnConv2d(layer, activation)
        return lowered if lowered.pointwise or not pointwise_only else None
    if type(layer) is nn.Linear:
        return OneDnnLinear(layer, activation)
    return None


def onednn_can_run(model: nn.Module) -> bool:
    """Whether this torch has oneDNN and the model's parameters are float32 on the CPU."""
    return HAS_ONEDNN and all(
        parameter.device.type == "cpu" and parameter.dtype == torch.float32 for parameter in model.parameters()
    )


def _lower_layers(model: nn.Module, pointwise_only: bool) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            lowered = _lowered(child, nn.Identity(), pointwise_only)
            if lowered is not None:
                module.register_module(name, lowered)
    return model


def lower_to_onednn(model: nn.Module, chains: Iterable[tuple[nn.Module, tuple[str, ...]]]) -> nn.Module:
    """Every conv and Linear of an eval-mode `model` lowered, in place, to its oneDNN layer; in
    each chain (owner, names of layers its forward applies in order), an activation that follows
    a layer, identities aside, becomes that layer's post-op and an identity."""
    for owner, chain in chains:
        for index, name in enumerate(chain):
            following = next((later for later in chain[index + 1 :] if type(owner.get_submodule(later)) is not nn.Identity), None)
            activation = owner.get_submodule(following) if following else None
            if activation is None or post_op(activation) is None:
                continue
            lowered = _lowered(owner.get_submodule(name), activation, pointwise_only=False)
            if lowered is not None:
                owner.register_module(name, lowered)
                owner.register_module(following, nn.Identity())
    return _lower_layers(model, pointwise_only=False)


def use_onednn(model: nn.Module) -> nn.Module:
    """The model, in place, with its Linears and 1x1 convs on oneDNN's primitives on the CPU, in
    training as in evaluation. Its other convs stay torch's (oneDNN's already, where that is
    faster), and its modules, parameters and state_dict are otherwise unchanged."""
    return _lower_layers(model, pointwise_only=True)
