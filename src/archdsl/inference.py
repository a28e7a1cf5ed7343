"""`prepare_for_inference(model)`: the one call that readies a compiled model for evaluation.

What it changes, each exact up to float rounding (the logits move by ~1e-6):

* eval mode;
* every BatchNorm that directly follows a convolution is folded into the convolution's weight
  and bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`) and replaced by an identity. Pairs are
  found in the runs of layers a forward applies one after another: an `nn.Sequential`'s
  children, and the chains a module declares (`LayerChains`, blocks/layers.py);
* parameters and buffers in channels-last memory, so that convolutions run on NHWC data and a
  map's per-pixel view (B, H, W, C), which LayerNorms and Linears read, needs no copy
  (archdsl's `GELU`, blocks/layers.py, keeps torch's fast contiguous kernel on such maps);
* on a CPU with oneDNN, in float32: convolutions and Linears run as oneDNN primitives, each with
  the ReLU, GELU or Swish that follows it in a chain as the primitive's post-op (`onednn.py`).

The prepared model keeps its module names except for the folded norms and the fused activations,
which become identities: save a checkpoint before preparing, not after.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from archdsl.blocks.layers import LayerChains
from archdsl.onednn import lower_to_onednn, onednn_can_run


def layer_chains(model: nn.Module) -> Iterator[tuple[nn.Module, tuple[str, ...]]]:
    """Each (owner, attribute names) run of layers that the owner's forward applies in order with
    nothing between: an nn.Sequential's children, and every `LayerChains` declaration."""
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            yield module, tuple(module._modules)
        if isinstance(module, LayerChains):
            for chain in module.layer_chains:
                yield module, chain


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every conv → BatchNorm pair of an eval-mode model (see the module's docstring)."""
    if model.training:
        raise ValueError("fold_batch_norms folds running statistics: call model.eval() first")
    for owner, chain in layer_chains(model):
        for conv_name, norm_name in zip(chain, chain[1:]):
            conv, norm = owner.get_submodule(conv_name), owner.get_submodule(norm_name)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):  # a norm option may name another norm
                owner.register_module(conv_name, fuse_conv_bn_eval(conv, norm))
                owner.register_module(norm_name, nn.Identity())
    return model


def prepare_for_inference(model: nn.Module, onednn: bool = True) -> nn.Module:
    """The model, in place, in eval mode with its BatchNorms folded, its memory channels-last and,
    on a CPU with oneDNN unless `onednn` is false, its convs and Linears lowered to oneDNN with
    their activations fused."""
    model.eval()
    fold_batch_norms(model)
    model.to(memory_format=torch.channels_last)
    if onednn and onednn_can_run(model):
        lower_to_onednn(model, layer_chains(model))
    return model
