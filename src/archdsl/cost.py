"""Counting cost: parameters, and FLOPs three ways.

* `fvcore_raw`: fvcore's own rules on the built module — what the literature compares to.
* `flops`: the same trace plus handles for ops the project uses that fvcore skips:
    - `aten::avg_pool2d` (input elements, the rule fvcore itself uses for adaptive pooling):
      CloFormer's K/V pooling; fvcore counts adaptive pooling but not this one.
    - `aten::scaled_dot_product_attention` (the two matmuls it fuses): fused attention is
      traced as explicit matmuls by `blocks.layers.attend`, but any op that calls SDPA directly
      would otherwise vanish from the count.
    - `aten::embedding_bag` with per-sample weights (one multiply-add per gathered element):
      a learned weighted sum over index runs, as SG-Former's significance-guided token
      aggregation does it in one gather (the authors' code uses one Linear per run length).
  Softmax, activations and elementwise products stay uncounted: the papers count
  multiply-adds of convolutions, linear layers and matmuls (plus fvcore's norm rules).
* `analytic`: summed from the ops' own FLOP rules over the lowered graph, no module needed.

One multiply-add counts as one FLOP throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from torch import nn


def _input_elements(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    return prod(get_shape(inputs[0]))


def _sdpa_flops(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(inputs[i]) for i in range(3))
    return prod(query[:-1]) * key[-2] * (query[-1] + value[-1])


def _weighted_bag_flops(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    # aten::embedding_bag(weight, indices, offsets, scale_grad_by_freq, mode, sparse, per_sample_weights, ...)
    if inputs[6].type().kind() == "NoneType":
        return 0  # plain sums, uncounted like every other addition
    return prod(get_shape(inputs[1])) * get_shape(inputs[0])[-1]


EXTRA_HANDLES = {
    "aten::avg_pool2d": _input_elements,
    "aten::scaled_dot_product_attention": _sdpa_flops,
    "aten::embedding_bag": _weighted_bag_flops,
}


@dataclass(frozen=True)
class FlopCount:
    flops: int | None  # fvcore with the project's handles (None: no module was built)
    fvcore_raw: int | None
    analytic: int

    def __int__(self) -> int:
        return self.flops if self.flops is not None else self.analytic


def fvcore_counts(model: nn.Module, image_size: tuple[int, int], in_channels: int = 3) -> tuple[int, int]:
    """(with handles, raw) from one fvcore trace at batch 1, in eval mode."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(1, in_channels, *image_size))
            for name, handle in EXTRA_HANDLES.items():
                analysis.set_op_handle(name, handle)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total = int(analysis.total())
            extra = sum(int(analysis.by_operator().get(name.split("::")[-1], 0)) for name in EXTRA_HANDLES)
    finally:
        model.train(was_training)
    return total, total - extra


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; buffers (BatchNorm statistics) are not parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
