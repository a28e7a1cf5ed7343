"""Counting cost: parameters (of a built module, or of a lowered graph without building it), and
FLOPs three ways.

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

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple
from weakref import WeakKeyDictionary

import torch
from torch import nn

from archdsl.compiler import build_node
from archdsl.graph import ArchGraph
from archdsl.ops import FlopHandle, registered_ops

_counting_flops: ContextVar[bool] = ContextVar("counting_flops", default=False)


def counting_flops() -> bool:
    """Whether fvcore is tracing the model to count its FLOPs: a module that runs a fused kernel
    fvcore does not count (attention) takes its explicit path then, which fvcore counts as it
    counts the authors' code; traced or exported for any other purpose, it runs eager's kernel.
    (`is_tracing` first: torch.compile reads it as False and never reaches the ContextVar, which
    it cannot trace.)"""
    return torch.jit.is_tracing() and _counting_flops.get()


@contextmanager
def _counting() -> Iterator[None]:
    token = _counting_flops.set(True)
    try:
        yield
    finally:
        _counting_flops.reset(token)


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
        with torch.no_grad(), _counting():
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


class ParamCount(NamedTuple):
    """Parameter elements; buffers (BatchNorm statistics) are not parameters."""

    trainable: int
    total: int


def count_params(model: nn.Module) -> ParamCount:
    """The parameters of a built module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParamCount(trainable, sum(p.numel() for p in model.parameters()))


_counted_graphs: WeakKeyDictionary[ArchGraph, dict[str, ParamCount]] = WeakKeyDictionary()


def node_params(graph: ArchGraph) -> dict[str, ParamCount]:
    """The parameters of each node of a lowered graph (node name -> count), without building the
    network: each node's module is built on the meta device (no memory), each distinct node once
    (a stage's blocks repeat its pattern), and a graph is counted once."""
    if graph not in _counted_graphs:
        by_kind: dict[tuple, ParamCount] = {}
        counts = {}
        for node in graph.nodes():
            key = (node.path, node.in_shape, node.out_shape, node.block.ffn is None if node.block else None)
            if key not in by_kind:
                with torch.device("meta"):
                    by_kind[key] = count_params(build_node(node))
            counts[node.name] = by_kind[key]
        _counted_graphs[graph] = counts
    return _counted_graphs[graph]


def graph_params(graph: ArchGraph) -> ParamCount:
    """The parameters of the network a lowered graph compiles to (see `node_params`)."""
    counts = node_params(graph).values()
    return ParamCount(sum(count.trainable for count in counts), sum(count.total for count in counts))
