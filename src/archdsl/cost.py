"""Counting cost: parameters, and FLOPs three ways.

* `fvcore_raw`: fvcore's own rules on the built module — what the literature compares to.
* `flops`: the same trace plus handles for aten ops that fvcore skips, each declared by the op
  whose module runs it, beside its FLOP rule (`Op.fvcore_handles`): average pooling
  (`pooled_attention`), fused SDPA (any attention candidate), weighted `embedding_bag`
  (`self_guided_attention`). Softmax, activations and elementwise products stay uncounted: the
  papers count multiply-adds of convolutions, linear layers and matmuls (plus fvcore's norm rules).
* `analytic`: summed from the ops' own FLOP rules over the lowered graph, no module needed.

One multiply-add counts as one FLOP throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from archdsl.ops import FlopHandle, registered_ops


def flop_handles() -> dict[str, FlopHandle]:
    """aten op -> FLOP rule, from every registered op's `fvcore_handles`; two different rules for
    one aten op are an error."""
    handles: dict[str, FlopHandle] = {}
    owners: dict[str, str] = {}
    for cls in registered_ops():
        for name, handle in cls.fvcore_handles.items():
            if handles.setdefault(name, handle) is not handle:
                raise ValueError(f"ops {owners[name]} and {cls.__name__} declare different FLOP rules for {name}")
            owners.setdefault(name, cls.__name__)
    return handles


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

    handles = flop_handles()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(1, in_channels, *image_size))
            for name, handle in handles.items():
                analysis.set_op_handle(name, handle)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total = int(analysis.total())
            extra = sum(int(analysis.by_operator().get(name.split("::")[-1], 0)) for name in handles)
    finally:
        model.train(was_training)
    return total, total - extra


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; buffers (BatchNorm statistics) are not parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
