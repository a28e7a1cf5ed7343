"""A built model's summary: per-stage blocks, output shape, parameters and FLOPs, plus totals
(what `archdsl build` prints, as a table or as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from archdsl.cost import count_params, fvcore_counts
from archdsl.graph import ArchGraph
from archdsl.network import ArchNet
from archdsl.ops import FeatureShape, extra_tokens_text


@dataclass
class PartSummary:
    part: str  # stem | stage N | head
    blocks: int
    out_shape: list[int]  # channels, height, width of the map (the head: its outputs)
    extra_tokens: int  # carried beside the map (a class token), see archdsl.ops.FeatureShape
    params: int
    flops: int

    def shape_text(self) -> str:
        return "x".join(map(str, self.out_shape)) + extra_tokens_text(self.extra_tokens)


@dataclass
class ModelSummary:
    name: str | None
    img_size: list[int]
    params: int
    trainable_params: int
    flops: int | None  # fvcore with the project's handles; None when fvcore was not asked for
    flops_fvcore_raw: int | None
    flops_analytic: int
    stages: list[PartSummary]
    pretrained_cfg: dict | None  # the family's evaluation preprocessing (archdsl.pretrained)

    def as_dict(self) -> dict:
        return asdict(self)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _map_sizes(shape: FeatureShape) -> list[int]:
    return [shape.channels, shape.height, shape.width]


def summarize(model: ArchNet, graph: ArchGraph, fvcore: bool = True) -> ModelSummary:
    """`fvcore`: also trace the module with fvcore (seconds for a large model); otherwise only
    the analytic count is filled in."""
    spec = graph.spec
    stem = graph.node("stem")
    parts = [PartSummary("stem", 0, _map_sizes(stem.out_shape), stem.out_shape.extra_tokens, _params(model.stem), stem.flops)]
    for index, stage in enumerate(model.stages):
        nodes = graph.stage_nodes(index)
        out = nodes[-1].out_shape
        parts.append(
            PartSummary(
                f"stage {index}",
                sum(n.kind == "block" for n in nodes),
                _map_sizes(out),
                out.extra_tokens,
                _params(stage),
                sum(n.flops for n in nodes),
            )
        )
    head = graph.node("head")
    parts.append(PartSummary("head", 0, [head.out_shape.channels], 0, _params(model.head), head.flops))
    trainable, total = count_params(model)
    flops, raw = fvcore_counts(model, spec.image_size, spec.input.channels) if fvcore else (None, None)
    return ModelSummary(spec.name, list(spec.image_size), total, trainable, flops, raw, graph.flops, parts, model.pretrained_cfg)
