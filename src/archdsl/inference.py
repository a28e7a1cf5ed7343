"""`prepare_for_inference(model)`: the one call that readies a compiled model for evaluation.

What it changes, each exact up to float rounding (the logits move by ~1e-6):

* eval mode;
* every BatchNorm that directly follows a convolution is folded into the convolution's weight
  and bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`) and replaced by an identity. Pairs are
  found structurally inside `nn.Sequential`s, and declared by the modules that apply them in
  their own forward (`ConvNormPairs`);
* parameters and buffers in channels-last memory, so that convolutions run on NHWC data and a
  map's per-pixel view (B, H, W, C), which LayerNorms and Linears read, needs no copy
  (archdsl's `GELU`, blocks/layers.py, keeps torch's fast contiguous kernel on such maps).

The prepared model keeps its module names except for the folded norms, which become identities:
save a checkpoint before preparing, not after.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class ConvNormPairs:
    """Mixed into a module whose forward applies a BatchNorm to a convolution's output with
    nothing between: `conv_norm_pairs` names each (conv, norm) pair of its attributes."""

    conv_norm_pairs: ClassVar[tuple[tuple[str, str], ...]] = ()


def _fold(owner: nn.Module, conv_name: str, norm_name: str) -> None:
    conv, norm = owner.get_submodule(conv_name), owner.get_submodule(norm_name)
    if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):  # a norm option may name another norm
        owner.register_module(conv_name, fuse_conv_bn_eval(conv, norm))
        owner.register_module(norm_name, nn.Identity())


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every conv → BatchNorm pair of an eval-mode model (see the module's docstring)."""
    if model.training:
        raise ValueError("fold_batch_norms folds running statistics: call model.eval() first")
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for conv_name, norm_name in zip(names, names[1:]):
                _fold(module, conv_name, norm_name)
        if isinstance(module, ConvNormPairs):
            for conv_name, norm_name in module.conv_norm_pairs:
                _fold(module, conv_name, norm_name)
    return model


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """The model, in place, in eval mode with its BatchNorms folded and its memory channels-last."""
    model.eval()
    fold_batch_norms(model)
    return model.to(memory_format=torch.channels_last)
